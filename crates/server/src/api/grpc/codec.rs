//! Conversions between the gRPC messages and oxinfer's types: inference requests (raw or typed
//! contents) and responses (raw contents), parameters, metadata, configuration and statistics.

use std::collections::HashMap;

use oxinfer_core::protocol::json::{InputCheck, check_shape};
use oxinfer_core::protocol::{
    InferRequest, InferResponse, Parameter, Parameters, RequestedOutput, raw,
};
use oxinfer_core::{DataType, Error, Tensor, TensorData};

use super::pb;
use crate::admin::ModelStatistics;
use crate::models::ServedModel;
use crate::models::model_config::ModelConfig;
use crate::telemetry::stats::Duration64;

/// An empty version field means "the highest version served".
pub(super) fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

fn parameter(p: &pb::InferParameter) -> Option<Parameter> {
    use pb::infer_parameter::ParameterChoice as C;
    Some(match p.parameter_choice.as_ref()? {
        C::BoolParam(b) => Parameter::Bool(*b),
        C::Int64Param(i) => Parameter::Int64(*i),
        C::StringParam(s) => Parameter::String(s.clone()),
        C::DoubleParam(d) => Parameter::Double(*d),
        C::Uint64Param(u) => match i64::try_from(*u) {
            Ok(i) => Parameter::Int64(i),
            Err(_) => Parameter::Uint64(*u),
        },
    })
}

fn parameters(map: &HashMap<String, pb::InferParameter>) -> Parameters {
    map.iter()
        .filter_map(|(k, v)| Some((k.clone(), parameter(v)?)))
        .collect()
}

fn to_pb_parameter(p: &Parameter) -> pb::InferParameter {
    use pb::infer_parameter::ParameterChoice as C;
    pb::InferParameter {
        parameter_choice: Some(match p {
            Parameter::Bool(b) => C::BoolParam(*b),
            Parameter::Int64(i) => C::Int64Param(*i),
            Parameter::Uint64(u) => C::Uint64Param(*u),
            Parameter::Double(d) => C::DoubleParam(*d),
            Parameter::String(s) => C::StringParam(s.clone()),
        }),
    }
}

/// [`to_pb_parameter`] for a parameter that is not needed afterwards (a string moves).
fn into_pb_parameter(p: Parameter) -> pb::InferParameter {
    match p {
        Parameter::String(s) => pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(s)),
        },
        other => to_pb_parameter(&other),
    }
}

/// Narrows typed gRPC contents to a tensor of `T`, refusing values out of range.
fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S> + oxinfer_core::Element>(
    name: &str,
    shape: oxinfer_core::Shape,
    values: &[S],
) -> Result<Tensor, Error> {
    let narrowed = values
        .iter()
        .map(|&v| {
            T::try_from(v).map_err(|_| {
                Error::invalid(format!(
                    "input '{name}': {v} is out of range for {}",
                    T::DATATYPE
                ))
            })
        })
        .collect::<Result<Vec<T>, Error>>()?;
    Tensor::from_vec(name, shape, narrowed)
}

fn from_contents(
    name: &str,
    datatype: DataType,
    shape: oxinfer_core::Shape,
    count: usize,
    c: pb::InferTensorContents,
) -> Result<Tensor, Error> {
    let len = match datatype {
        DataType::Bool => c.bool_contents.len(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => c.int_contents.len(),
        DataType::Int64 => c.int64_contents.len(),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => c.uint_contents.len(),
        DataType::Uint64 => c.uint64_contents.len(),
        DataType::Fp32 => c.fp32_contents.len(),
        DataType::Fp64 => c.fp64_contents.len(),
        DataType::Bytes => c.bytes_contents.len(),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(Error::invalid(format!(
                "input '{name}': {datatype} can only be sent in raw_input_contents"
            )));
        }
    };
    if len != count {
        return Err(Error::invalid(format!(
            "input '{name}': shape {shape:?} needs {count} elements but contents has {len}"
        )));
    }
    match datatype {
        DataType::Bool => Tensor::from_bools(name, shape, &c.bool_contents),
        DataType::Int8 => narrow::<i32, i8>(name, shape, &c.int_contents),
        DataType::Int16 => narrow::<i32, i16>(name, shape, &c.int_contents),
        DataType::Int32 => Tensor::from_vec(name, shape, c.int_contents),
        DataType::Int64 => Tensor::from_vec(name, shape, c.int64_contents),
        DataType::Uint8 => narrow::<u32, u8>(name, shape, &c.uint_contents),
        DataType::Uint16 => narrow::<u32, u16>(name, shape, &c.uint_contents),
        DataType::Uint32 => Tensor::from_vec(name, shape, c.uint_contents),
        DataType::Uint64 => Tensor::from_vec(name, shape, c.uint64_contents),
        DataType::Fp32 => Tensor::from_vec(name, shape, c.fp32_contents),
        DataType::Fp64 => Tensor::from_vec(name, shape, c.fp64_contents),
        DataType::Bytes => Tensor::from_strings(name, shape, c.bytes_contents),
        DataType::Fp16 | DataType::Bf16 => unreachable!("refused above"),
    }
}

/// Decodes a `ModelInferRequest`: raw contents (sliced, no copy) or typed contents, never both.
///
/// `check` sees each input's name, datatype and shape before its contents are converted.
pub(super) fn decode(
    request: pb::ModelInferRequest,
    check: &InputCheck<'_>,
) -> Result<InferRequest, Error> {
    let raw_count = request.raw_input_contents.len();
    if raw_count > 0 {
        if raw_count != request.inputs.len() {
            return Err(Error::invalid(format!(
                "raw_input_contents has {raw_count} entries but the request has {} inputs; \
                 send one raw entry per input, in input order",
                request.inputs.len()
            )));
        }
        if let Some(mixed) = request.inputs.iter().find(|i| i.contents.is_some()) {
            return Err(Error::invalid(format!(
                "input '{}' has typed contents while the request uses raw_input_contents; \
                 use one or the other for all inputs",
                mixed.name
            )));
        }
    }
    let mut raws = request.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype: DataType = input
            .datatype
            .parse()
            .map_err(|e| Error::invalid(format!("input '{}': {e}", input.name)))?;
        let (shape, count) = check_shape(&input.name, &input.shape)?;
        check(&input.name, datatype, &shape, raw_count == 0)?;
        let tensor = match raws.next() {
            Some(data) => raw::tensor_from_raw(input.name, datatype, shape, data)?,
            None => {
                let contents = input.contents.ok_or_else(|| {
                    Error::invalid(format!(
                        "input '{}' has no data: set its contents or raw_input_contents",
                        input.name
                    ))
                })?;
                from_contents(&input.name, datatype, shape, count, contents)?
            }
        };
        inputs.push(tensor);
    }
    Ok(InferRequest {
        id: (!request.id.is_empty()).then_some(request.id),
        parameters: parameters(&request.parameters),
        inputs,
        outputs: request
            .outputs
            .into_iter()
            .map(|o| RequestedOutput {
                parameters: parameters(&o.parameters),
                name: o.name,
            })
            .collect(),
    })
}

/// Encodes a response: every output in `raw_output_contents`, one entry per output, in order.
pub(super) fn encode(response: InferResponse) -> pb::ModelInferResponse {
    // The response is taken apart, not copied: names and parameters move into the message,
    // shapes become `i64`s, and raw data is shared.
    let (outputs, raw_output_contents) = response
        .outputs
        .into_iter()
        .map(|t| {
            let (name, datatype, shape, data) = t.into_parts();
            let raw = match data {
                TensorData::Raw(bytes) => bytes,
                TensorData::Strings(items) => raw::encode_bytes_elements(&items),
            };
            let output = pb::model_infer_response::InferOutputTensor {
                name,
                datatype: datatype.as_str().to_string(),
                shape: shape.into_iter().map(|d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            };
            (output, raw)
        })
        .unzip();
    pb::ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id.unwrap_or_default(),
        parameters: response
            .parameters
            .into_iter()
            .map(|(k, v)| (k, into_pb_parameter(v)))
            .collect(),
        outputs,
        raw_output_contents,
    }
}

/// Model metadata's tensors.
pub(super) fn tensor_metadata(
    list: &[oxinfer_core::protocol::TensorMetadata],
) -> Vec<pb::model_metadata_response::TensorMetadata> {
    list.iter()
        .map(|t| pb::model_metadata_response::TensorMetadata {
            name: t.name.clone(),
            datatype: t.datatype.as_str().to_string(),
            shape: t.shape.clone(),
        })
        .collect()
}

/// The model configuration as gRPC's `ModelConfig`.
pub(super) fn pb_config(model: &ServedModel) -> pb::ModelConfig {
    // The REST config is the one description; gRPC carries the same values, with Triton's enum
    // names turned into the proto's numbers.
    let config = ModelConfig::of(model);
    let data_type = |name: &str| pb::DataType::from_str_name(name).unwrap_or_default() as i32;
    pb::ModelConfig {
        name: config.name,
        platform: config.platform,
        backend: config.backend,
        max_batch_size: config.max_batch_size,
        input: config
            .input
            .into_iter()
            .map(|t| pb::ModelInput {
                data_type: data_type(t.data_type),
                name: t.name,
                dims: t.dims,
                ..Default::default()
            })
            .collect(),
        output: config
            .output
            .into_iter()
            .map(|t| pb::ModelOutput {
                data_type: data_type(t.data_type),
                name: t.name,
                dims: t.dims,
                ..Default::default()
            })
            .collect(),
        scheduling_choice: config.dynamic_batching.map(|d| {
            pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                preferred_batch_size: d.preferred_batch_size,
                max_queue_delay_microseconds: d.max_queue_delay_microseconds,
                default_queue_policy: Some(pb::ModelQueuePolicy {
                    timeout_action: pb::model_queue_policy::TimeoutAction::Reject as i32,
                    default_timeout_microseconds: d
                        .default_queue_policy
                        .default_timeout_microseconds,
                    allow_timeout_override: d.default_queue_policy.allow_timeout_override,
                    max_queue_size: d.default_queue_policy.max_queue_size,
                }),
                ..Default::default()
            })
        }),
        instance_group: config
            .instance_group
            .iter()
            .map(|g| pb::ModelInstanceGroup {
                name: g.name.clone(),
                kind: pb::model_instance_group::Kind::from_str_name(g.kind).unwrap_or_default()
                    as i32,
                count: g.count,
                ..Default::default()
            })
            .collect(),
        parameters: config
            .parameters
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    pb::ModelParameter {
                        string_value: v.string_value,
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

fn duration(d: Duration64) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

/// One model version's statistics as gRPC's `ModelStatistics`.
pub(super) fn pb_stats(m: ModelStatistics) -> pb::ModelStatistics {
    let i = m.stats.inference_stats;
    pb::ModelStatistics {
        name: m.name,
        version: m.version,
        last_inference: m.stats.last_inference,
        inference_count: m.stats.inference_count,
        execution_count: m.stats.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(i.success),
            fail: duration(i.fail),
            queue: duration(i.queue),
            compute_input: duration(i.compute_input),
            compute_infer: duration(i.compute_infer),
            compute_output: duration(i.compute_output),
            cache_hit: duration(i.cache_hit),
            cache_miss: duration(i.cache_miss),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    //! Property tests of the gRPC request decoder: never panics on any message (or any bytes
    //! prost accepts as one), and raw contents round-trip.

    use super::*;
    use oxinfer_core::bytes::Bytes;
    use proptest::prelude::*;
    use prost::Message;

    fn no_check(_: &str, _: DataType, _: &[usize], _: bool) -> Result<(), Error> {
        Ok(())
    }

    fn contents() -> impl Strategy<Value = pb::InferTensorContents> {
        (
            prop::collection::vec(any::<bool>(), 0..8),
            prop::collection::vec(any::<i32>(), 0..8),
            prop::collection::vec(any::<i64>(), 0..8),
            prop::collection::vec(any::<u32>(), 0..8),
            prop::collection::vec(any::<f32>(), 0..8),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..8),
        )
            .prop_map(|(b, i, l, u, f, s)| pb::InferTensorContents {
                bool_contents: b,
                int_contents: i,
                int64_contents: l,
                uint_contents: u,
                fp32_contents: f,
                bytes_contents: s.into_iter().map(Bytes::from).collect(),
                ..Default::default()
            })
    }

    fn request() -> impl Strategy<Value = pb::ModelInferRequest> {
        let datatype = prop_oneof![
            Just("BOOL"),
            Just("INT8"),
            Just("INT32"),
            Just("INT64"),
            Just("UINT16"),
            Just("UINT32"),
            Just("FP16"),
            Just("FP32"),
            Just("BYTES"),
            Just("NOPE"),
        ];
        let input = (
            "[a-z]{1,3}",
            datatype,
            prop::collection::vec(prop_oneof![-1i64..9, Just(1 << 40), Just(i64::MAX)], 0..3),
            prop::option::of(contents()),
        )
            .prop_map(|(name, dt, shape, contents)| {
                pb::model_infer_request::InferInputTensor {
                    name,
                    datatype: dt.to_string(),
                    shape,
                    contents,
                    ..Default::default()
                }
            });
        (
            prop::collection::vec(input, 0..4),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..32), 0..4),
        )
            .prop_map(|(inputs, raw)| pb::ModelInferRequest {
                model_name: "m".into(),
                inputs,
                raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
                ..Default::default()
            })
    }

    proptest! {
        // A fixed seed: CI runs the same cases every time (change it, or raise `cases`, to explore).
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x0f1e_2026),
        ..ProptestConfig::default()
    })]

        #[test]
        fn any_request_decodes_or_fails_cleanly(request in request()) {
            let _ = decode(request, &no_check);
        }

        #[test]
        fn any_bytes_prost_accepts_decode_or_fail_cleanly(
            bytes in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            if let Ok(request) = pb::ModelInferRequest::decode(&bytes[..]) {
                let _ = decode(request, &no_check);
            }
        }

        #[test]
        fn raw_contents_round_trip(values in prop::collection::vec(any::<i32>(), 0..32)) {
            let tensor = Tensor::from_vec("x", vec![values.len()], values.clone()).unwrap();
            let request = pb::ModelInferRequest {
                inputs: vec![pb::model_infer_request::InferInputTensor {
                    name: "x".into(),
                    datatype: "INT32".into(),
                    shape: vec![values.len() as i64],
                    ..Default::default()
                }],
                raw_input_contents: vec![raw::raw_bytes(&tensor)],
                ..Default::default()
            };
            // Through the wire format, as a client sends it.
            let wire = pb::ModelInferRequest::decode(request.encode_to_vec().as_slice()).unwrap();
            let decoded = decode(wire, &no_check).unwrap();
            prop_assert_eq!(decoded.inputs[0].to_vec::<i32>().unwrap(), values);
        }
    }

    #[test]
    fn the_check_runs_before_contents_are_converted() {
        let request = pb::ModelInferRequest {
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "x".into(),
                datatype: "INT32".into(),
                shape: vec![3],
                contents: Some(pb::InferTensorContents {
                    int_contents: vec![1, 2, 3],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = decode(request, &|name, _, shape, _| {
            Err(Error::invalid(format!("refused {name} {shape:?}")))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "refused x [3]");
    }
}
