//! The Triton-style model configuration of a served model (`GET /v2/models/{m}/config`, gRPC
//! `ModelConfig`), built from the manifest entry and the model's signature.
//!
//! As in Triton: with dynamic batching off, `max_batch_size` is 0 and `dims` are the full
//! shapes (leading `-1` included); with it on (`[models.scheduler] max_batch_size > 0`),
//! `max_batch_size` is that limit, `dims` leave out the batch dimension, and
//! `dynamic_batching` gives the delay, preferred sizes and queue policy. The instance group
//! count is the scheduler's `instances`. The queue bound and default timeout are also in
//! `parameters` as `scheduler.*`, since Triton's schema has no place for them without
//! dynamic batching.

use std::collections::BTreeMap;

use oxinfer_core::DataType;
use oxinfer_core::protocol::TensorMetadata;
use serde::Serialize;

use crate::models::ServedModel;

/// One input or output of a model configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ConfigTensor {
    pub(crate) name: String,
    /// Triton's type name (`TYPE_FP32`, `TYPE_STRING` for BYTES, ...).
    pub(crate) data_type: &'static str,
    /// Shape; `-1` for dynamic dimensions.
    pub(crate) dims: Vec<i64>,
}

/// One instance group (`KIND_CPU`, `count`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct InstanceGroup {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) count: i32,
}

/// The configuration, serialized with Triton's protobuf-JSON field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ModelConfig {
    pub(crate) name: String,
    pub(crate) platform: String,
    /// The runtime (`tract`, `onnxruntime`, ...).
    pub(crate) backend: String,
    /// The most rows the dynamic batcher joins; 0 when batching is off.
    pub(crate) max_batch_size: i32,
    pub(crate) input: Vec<ConfigTensor>,
    pub(crate) output: Vec<ConfigTensor>,
    /// Dynamic batching settings, when batching is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dynamic_batching: Option<DynamicBatching>,
    pub(crate) instance_group: Vec<InstanceGroup>,
    /// The model's digest (`sha256`) and provenance (`provenance.*`), as Triton's
    /// `{"string_value": ...}` parameters.
    pub(crate) parameters: BTreeMap<String, StringValue>,
}

/// Triton's `ModelDynamicBatching`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DynamicBatching {
    /// Batch sizes run as soon as they are reached.
    pub(crate) preferred_batch_size: Vec<i32>,
    /// How long the oldest request waits for others.
    pub(crate) max_queue_delay_microseconds: u64,
    /// The queue policy.
    pub(crate) default_queue_policy: QueuePolicy,
}

/// Triton's `ModelQueuePolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct QueuePolicy {
    /// Always `REJECT`: an expired request gets an error.
    pub(crate) timeout_action: &'static str,
    /// The deadline of requests without a `timeout` parameter (0: none).
    pub(crate) default_timeout_microseconds: u64,
    /// Always true: a request's `timeout` parameter overrides the default.
    pub(crate) allow_timeout_override: bool,
    /// Requests that may wait; more are refused.
    pub(crate) max_queue_size: u32,
}

/// A Triton `ModelParameter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct StringValue {
    pub(crate) string_value: String,
}

/// Triton's `DataType` enum name for an OIP datatype.
pub(crate) fn triton_type(dt: DataType) -> &'static str {
    match dt {
        DataType::Bool => "TYPE_BOOL",
        DataType::Uint8 => "TYPE_UINT8",
        DataType::Uint16 => "TYPE_UINT16",
        DataType::Uint32 => "TYPE_UINT32",
        DataType::Uint64 => "TYPE_UINT64",
        DataType::Int8 => "TYPE_INT8",
        DataType::Int16 => "TYPE_INT16",
        DataType::Int32 => "TYPE_INT32",
        DataType::Int64 => "TYPE_INT64",
        DataType::Fp16 => "TYPE_FP16",
        DataType::Bf16 => "TYPE_BF16",
        DataType::Fp32 => "TYPE_FP32",
        DataType::Fp64 => "TYPE_FP64",
        DataType::Bytes => "TYPE_STRING",
    }
}

/// `batched`: leave out the batch dimension, as Triton does when `max_batch_size > 0`.
fn tensors(list: &[TensorMetadata], batched: bool) -> Vec<ConfigTensor> {
    list.iter()
        .map(|t| ConfigTensor {
            name: t.name.clone(),
            data_type: triton_type(t.datatype),
            dims: if batched {
                t.shape[1..].to_vec()
            } else {
                t.shape.clone()
            },
        })
        .collect()
}

impl ModelConfig {
    /// The configuration of a served model.
    pub(crate) fn of(model: &ServedModel) -> ModelConfig {
        let signature = model.signature();
        let scheduling = &model.entry.scheduler;
        let batched = scheduling.batching();
        let policy = QueuePolicy {
            timeout_action: "REJECT",
            default_timeout_microseconds: scheduling.default_timeout_us,
            allow_timeout_override: true,
            max_queue_size: scheduling.max_queue_size.min(u32::MAX as usize) as u32,
        };
        let mut parameters: BTreeMap<String, StringValue> = model
            .provenance()
            .into_iter()
            .map(|(k, v)| (k, StringValue { string_value: v }))
            .collect();
        parameters.insert(
            "runtime".to_string(),
            StringValue {
                string_value: format!(
                    "{}{}",
                    model.entry.runtime,
                    if model.entry.runtime_detected {
                        " (detected from the files)"
                    } else {
                        ""
                    }
                ),
            },
        );
        for (k, v) in [
            ("scheduler.max_queue_size", scheduling.max_queue_size as u64),
            (
                "scheduler.default_timeout_us",
                scheduling.default_timeout_us,
            ),
        ] {
            parameters.insert(
                k.to_string(),
                StringValue {
                    string_value: v.to_string(),
                },
            );
        }
        ModelConfig {
            name: model.name.clone(),
            platform: model.platform.to_string(),
            backend: model.entry.runtime.clone(),
            max_batch_size: scheduling.max_batch_size.min(i32::MAX as usize) as i32,
            input: tensors(&signature.inputs, batched),
            output: tensors(&signature.outputs, batched),
            dynamic_batching: batched.then(|| DynamicBatching {
                preferred_batch_size: scheduling
                    .preferred_batch_sizes
                    .iter()
                    .map(|&n| n.min(i32::MAX as usize) as i32)
                    .collect(),
                max_queue_delay_microseconds: scheduling.max_queue_delay_us,
                default_queue_policy: policy,
            }),
            instance_group: vec![InstanceGroup {
                name: model.name.clone(),
                kind: "KIND_CPU",
                count: scheduling.instances.min(i32::MAX as usize) as i32,
            }],
            parameters,
        }
    }
}
