//! The Triton-style model configuration of a served model (`GET /v2/models/{m}/config`, gRPC
//! `ModelConfig`), built from the manifest entry and the model's signature.
//!
//! `max_batch_size` is 0: oxinfer does not batch requests yet, so `dims` are the full shapes
//! (leading `-1` included), as Triton does for models without batching.

use std::collections::BTreeMap;

use oxinfer_core::DataType;
use oxinfer_core::protocol::TensorMetadata;
use serde::Serialize;

use crate::repository::ServedModel;

/// One input or output of a model configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigTensor {
    /// Tensor name.
    pub name: String,
    /// Triton's type name (`TYPE_FP32`, `TYPE_STRING` for BYTES, ...).
    pub data_type: &'static str,
    /// Shape; `-1` for dynamic dimensions.
    pub dims: Vec<i64>,
}

/// One instance group (`KIND_CPU`, `count`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceGroup {
    /// Group name.
    pub name: String,
    /// Where the instances run.
    pub kind: &'static str,
    /// How many instances.
    pub count: i32,
}

/// The configuration, serialized with Triton's protobuf-JSON field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelConfig {
    /// Model name.
    pub name: String,
    /// Platform, as in model metadata.
    pub platform: String,
    /// The runtime (`tract`, `onnxruntime`, ...).
    pub backend: String,
    /// 0: no server-side batching.
    pub max_batch_size: i32,
    /// Inputs.
    pub input: Vec<ConfigTensor>,
    /// Outputs.
    pub output: Vec<ConfigTensor>,
    /// Instances.
    pub instance_group: Vec<InstanceGroup>,
    /// The model's digest (`sha256`) and provenance (`provenance.*`), as Triton's
    /// `{"string_value": ...}` parameters.
    pub parameters: BTreeMap<String, StringValue>,
}

/// A Triton `ModelParameter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StringValue {
    /// The value.
    pub string_value: String,
}

/// Triton's `DataType` enum name for an OIP datatype.
pub fn triton_type(dt: DataType) -> &'static str {
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

fn tensors(list: &[TensorMetadata]) -> Vec<ConfigTensor> {
    list.iter()
        .map(|t| ConfigTensor {
            name: t.name.clone(),
            data_type: triton_type(t.datatype),
            dims: t.shape.clone(),
        })
        .collect()
}

impl ModelConfig {
    /// The configuration of a served model.
    pub fn of(model: &ServedModel) -> ModelConfig {
        let signature = model.signature();
        ModelConfig {
            name: model.name.clone(),
            platform: model.platform.to_string(),
            backend: model.entry.runtime.clone(),
            max_batch_size: 0,
            input: tensors(&signature.inputs),
            output: tensors(&signature.outputs),
            instance_group: vec![InstanceGroup {
                name: model.name.clone(),
                kind: "KIND_CPU",
                count: 1,
            }],
            parameters: model
                .provenance()
                .into_iter()
                .map(|(k, v)| (k, StringValue { string_value: v }))
                .collect(),
        }
    }
}
