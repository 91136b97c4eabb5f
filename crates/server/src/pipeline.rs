//! The request path below the wire decoders, shared by every front end: assign the request id,
//! find the model, validate the request against its signature, queue it on the model's
//! scheduler, assemble the response, and record the request (telemetry, inference log).
//!
//! REST (JSON and binary) and gRPC decode into an [`InferRequest`] and call [`handle`], so a
//! model behaves the same through all of them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument;

use oxinfer_core::protocol::{InferRequest, InferResponse, Parameter, TensorMetadata};
use oxinfer_core::{Error, ModelSignature, Result, Tensor};

use crate::models::ServedModel;
use crate::state::AppState;
use crate::telemetry::Protocol;
use crate::telemetry::inference_log::Event;

/// A request checked against its model: inputs in signature order, outputs to return.
#[derive(Debug)]
struct Validated {
    /// One tensor per model input, in signature order.
    inputs: Vec<Tensor>,
    /// Indices into the model's outputs, in the order the client asked for them (all outputs in
    /// model order when the client named none).
    outputs: Vec<usize>,
}

fn shape_fits(declared: &[i64], actual: &[usize]) -> bool {
    declared.len() == actual.len()
        && declared
            .iter()
            .zip(actual)
            .all(|(&d, &a)| d < 0 || d as u64 == a as u64)
}

fn list(tensors: &[TensorMetadata]) -> String {
    tensors
        .iter()
        .map(|t| format!("'{}'", t.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a request against a model signature: every declared input given exactly once, with
/// the declared datatype and a compatible shape; no unknown inputs; requested outputs exist.
fn validate(
    model_name: &str,
    signature: &ModelSignature,
    request: &mut InferRequest,
) -> Result<Validated> {
    let mut slots: Vec<Option<Tensor>> = vec![None; signature.inputs.len()];
    for tensor in std::mem::take(&mut request.inputs) {
        let Some((ix, meta)) = signature.input(tensor.name()) else {
            return Err(Error::invalid(format!(
                "model '{model_name}' has no input '{}' (inputs: {})",
                tensor.name(),
                list(&signature.inputs)
            )));
        };
        if tensor.datatype() != meta.datatype {
            return Err(Error::invalid(format!(
                "input '{}': datatype {} does not match the model's {}",
                meta.name,
                tensor.datatype(),
                meta.datatype
            )));
        }
        if !shape_fits(&meta.shape, tensor.shape()) {
            return Err(Error::invalid(format!(
                "input '{}': shape {:?} does not match the model's {:?} (-1 is any size)",
                meta.name,
                tensor.shape(),
                meta.shape
            )));
        }
        if slots[ix].replace(tensor).is_some() {
            return Err(Error::invalid(format!(
                "input '{}' is given more than once",
                meta.name
            )));
        }
    }
    let inputs = slots
        .into_iter()
        .zip(&signature.inputs)
        .map(|(slot, meta)| {
            slot.ok_or_else(|| {
                Error::invalid(format!(
                    "missing input '{}' ({}, shape {:?})",
                    meta.name, meta.datatype, meta.shape
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let outputs = if request.outputs.is_empty() {
        (0..signature.outputs.len()).collect()
    } else {
        let mut seen = HashSet::new();
        request
            .outputs
            .iter()
            .map(|o| {
                let (ix, _) = signature.output(&o.name).ok_or_else(|| {
                    Error::invalid(format!(
                        "model '{model_name}' has no output '{}' (outputs: {})",
                        o.name,
                        list(&signature.outputs)
                    ))
                })?;
                if !seen.insert(ix) {
                    return Err(Error::invalid(format!(
                        "output '{}' is requested more than once",
                        o.name
                    )));
                }
                Ok(ix)
            })
            .collect::<Result<Vec<_>>>()?
    };
    Ok(Validated { inputs, outputs })
}

/// Where a request came from.
#[derive(Debug, Clone)]
pub(crate) struct Call<'a> {
    /// The model name in the URL or message.
    pub(crate) model: &'a str,
    /// The version asked for, if any.
    pub(crate) version: Option<&'a str>,
    pub(crate) protocol: Protocol,
    /// The client's address, when known.
    pub(crate) client: Option<SocketAddr>,
    /// A request id from outside the body (REST's `X-Request-ID` header).
    pub(crate) header_id: Option<String>,
}

/// The front ends' entry point: given the decoded request (or why decoding failed), assigns the
/// request id (the client's, else the `X-Request-ID` header, else a new UUID), finds the model,
/// runs [`infer`], and records the request in the model's telemetry, the inference log and the
/// debug log. Returns the request id with the outcome.
pub(crate) async fn handle(
    state: &AppState,
    call: Call<'_>,
    decoded: Result<InferRequest>,
) -> (String, Result<InferResponse>) {
    let arrived = SystemTime::now();
    let started = Instant::now();
    let id = match &decoded {
        Ok(r) if r.id.as_deref().is_some_and(|id| !id.is_empty()) => {
            r.id.clone().unwrap_or_default()
        }
        _ => call
            .header_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    };
    // Debug level: free unless a subscriber wants it (the OTLP exporter does; plain info logs
    // do not pay for a span per request).
    let span = tracing::debug_span!(
        "infer",
        request_id = %id,
        model = call.model,
        protocol = call.protocol.as_str()
    );
    let (model, inputs, result) = async {
        let model = match state.repository.get(call.model, call.version) {
            Ok(model) => model,
            Err(e) => return (None, Vec::new(), Err(e)),
        };
        let mut request = match decoded {
            Ok(request) => request,
            Err(e) => return (Some(model), Vec::new(), Err(e)),
        };
        request.id = Some(id.clone());
        let inputs = if state.log.is_some() {
            request.inputs.clone()
        } else {
            Vec::new()
        };
        let result = infer(&model, request).await;
        (Some(model), inputs, result)
    }
    .instrument(span.clone())
    .await;
    let elapsed = started.elapsed();
    match &model {
        Some(m) => m.telemetry.request(call.protocol, result.is_ok(), elapsed),
        None => state.metrics.record_rejected(call.protocol),
    }
    span.in_scope(|| match &result {
        Ok(_) => tracing::debug!(latency_us = elapsed.as_micros() as u64, "request succeeded"),
        Err(e) => {
            tracing::debug!(latency_us = elapsed.as_micros() as u64, error = %e, "request failed")
        }
    });
    if let Some(log) = &state.log {
        log.record(Event {
            timestamp: arrived,
            request_id: id.clone(),
            model: call.model.to_string(),
            version: model
                .as_ref()
                .map(|m| m.version.clone())
                .or(call.version.map(str::to_string))
                .unwrap_or_default(),
            sha256: model.as_ref().map(|m| m.sha256.clone()),
            protocol: call.protocol.as_str(),
            client: call.client,
            identity: None,
            error: result.as_ref().err().map(ToString::to_string),
            latency_us: elapsed.as_micros() as u64,
            inputs,
            outputs: result
                .as_ref()
                .map(|r| r.outputs.clone())
                .unwrap_or_default(),
        })
        .await;
    }
    (id, result)
}

/// The request's queue deadline: its `timeout` parameter, in microseconds (Triton's and
/// tritonclient's convention), if any.
fn request_timeout(request: &InferRequest) -> Result<Option<Duration>> {
    match request.parameters.get("timeout") {
        None => Ok(None),
        Some(Parameter::Int64(us)) if *us >= 0 => Ok(Some(Duration::from_micros(*us as u64))),
        Some(Parameter::Uint64(us)) => Ok(Some(Duration::from_micros(*us))),
        Some(other) => Err(Error::invalid(format!(
            "parameter 'timeout' must be a non-negative integer (microseconds), got {other:?}"
        ))),
    }
}

/// Runs one request on a model: validation, execution on the model's scheduler threads,
/// response assembly.
async fn infer(model: &Arc<ServedModel>, mut request: InferRequest) -> Result<InferResponse> {
    let started = Instant::now();
    let validated = validate(&model.name, model.signature(), &mut request)?;
    let timeout = request_timeout(&request)?;
    let telemetry = &model.telemetry;
    telemetry.input_checked(started.elapsed());
    let Validated { inputs, outputs } = validated;
    // The worker threads execute it; if this future is dropped (the client went away), the
    // queued job is dropped unexecuted.
    let reply = model.scheduler.submit(inputs, timeout)?;
    let produced = reply.await.map_err(|_| {
        tracing::error!(model = %model.name, version = %model.version, "a model worker stopped");
        Error::Internal(format!(
            "model '{}' failed while executing the request",
            model.name
        ))
    })??;
    let assembling = Instant::now();
    let mut slots: Vec<Option<Tensor>> = produced.into_iter().map(Some).collect();
    let outputs = outputs
        .into_iter()
        .map(|ix| {
            slots[ix]
                .take()
                .expect("each output index is requested once")
        })
        .collect();
    let response = InferResponse {
        model_name: model.name.clone(),
        model_version: model.version.clone(),
        id: request.id,
        parameters: [(
            "model_sha256".to_string(),
            Parameter::String(model.sha256.clone()),
        )]
        .into(),
        outputs,
    };
    telemetry.output_assembled(assembling.elapsed());
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxinfer_core::DataType;
    use oxinfer_core::protocol::RequestedOutput;

    fn signature() -> ModelSignature {
        ModelSignature {
            inputs: vec![
                TensorMetadata::new("a", DataType::Fp32, vec![-1, 2]),
                TensorMetadata::new("b", DataType::Int64, vec![3]),
            ],
            outputs: vec![
                TensorMetadata::new("y", DataType::Fp32, vec![-1]),
                TensorMetadata::new("z", DataType::Fp32, vec![-1]),
            ],
        }
    }

    fn request(inputs: Vec<Tensor>, outputs: &[&str]) -> InferRequest {
        InferRequest {
            inputs,
            outputs: outputs
                .iter()
                .map(|n| RequestedOutput {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn a(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec("a", shape, vec![0f32; n]).unwrap()
    }

    fn b() -> Tensor {
        Tensor::from_vec("b", vec![3], vec![1i64, 2, 3]).unwrap()
    }

    fn check(inputs: Vec<Tensor>, outputs: &[&str]) -> Result<Validated> {
        validate("m", &signature(), &mut request(inputs, outputs))
    }

    #[test]
    fn orders_inputs_and_outputs() {
        let v = check(vec![b(), a(vec![5, 2])], &["z", "y"]).unwrap();
        assert_eq!(v.inputs[0].name(), "a");
        assert_eq!(v.inputs[1].name(), "b");
        assert_eq!(v.outputs, vec![1, 0]);
        assert_eq!(
            check(vec![a(vec![1, 2]), b()], &[]).unwrap().outputs,
            vec![0, 1]
        );
    }

    #[test]
    fn each_mismatch_is_named() {
        let e = |inputs, outputs: &[&str]| check(inputs, outputs).unwrap_err().to_string();
        assert!(e(vec![a(vec![1, 2])], &[]).contains("missing input 'b'"));
        assert!(
            e(
                vec![
                    a(vec![1, 2]),
                    b(),
                    Tensor::from_vec("c", vec![1], vec![1u8]).unwrap()
                ],
                &[]
            )
            .contains("has no input 'c' (inputs: 'a', 'b')")
        );
        assert!(
            e(vec![a(vec![1, 3]), b()], &[])
                .contains("shape [1, 3] does not match the model's [-1, 2]")
        );
        assert!(e(vec![a(vec![2]), b()], &[]).contains("does not match"));
        let wrong_type = Tensor::from_vec("b", vec![3], vec![1i32, 2, 3]).unwrap();
        assert!(
            e(vec![a(vec![1, 2]), wrong_type], &[])
                .contains("datatype INT32 does not match the model's INT64")
        );
        assert!(e(vec![a(vec![1, 2]), b(), b()], &[]).contains("more than once"));
        assert!(
            e(vec![a(vec![1, 2]), b()], &["nope"])
                .contains("has no output 'nope' (outputs: 'y', 'z')")
        );
        assert!(e(vec![a(vec![1, 2]), b()], &["y", "y"]).contains("requested more than once"));
    }
}
