//! Open Inference Protocol types: requests, responses, metadata and parameters.
//!
//! The types here are the protocol's meaning, independent of the wire: the REST JSON codec is in
//! [`json`]; other codecs (binary tensor extension, gRPC) decode into the same types.

pub mod json;
mod numbers;
pub mod raw;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DataType, Tensor};

/// A protocol parameter value: `string | number | bool` in JSON; gRPC's `InferParameter` oneof
/// (`bool`, `int64`, `uint64`, `double`, `string`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Parameter {
    /// A boolean.
    Bool(bool),
    /// An integer that fits `i64`.
    Int64(i64),
    /// A non-negative integer above `i64::MAX`.
    Uint64(u64),
    /// A floating point number.
    Double(f64),
    /// A string.
    String(String),
}

impl Parameter {
    /// The value as a `u64`, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Parameter::Int64(v) => u64::try_from(v).ok(),
            Parameter::Uint64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a `bool`, when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Parameter::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// A set of named parameters, ordered by name.
pub type Parameters = BTreeMap<String, Parameter>;

/// An output the client asks for by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// Per-output parameters (e.g. `binary_data`).
    pub parameters: Parameters,
}

/// An inference request, decoded from any wire format.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    /// The client's request id, echoed in the response.
    pub id: Option<String>,
    /// Request-level parameters.
    pub parameters: Parameters,
    /// The input tensors, in the order the client sent them.
    pub inputs: Vec<Tensor>,
    /// The outputs the client asked for; empty means all outputs.
    pub outputs: Vec<RequestedOutput>,
}

/// An inference response.
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    /// The model that answered.
    pub model_name: String,
    /// The concrete version that answered.
    pub model_version: String,
    /// The request id.
    pub id: Option<String>,
    /// Response-level parameters.
    pub parameters: Parameters,
    /// The output tensors.
    pub outputs: Vec<Tensor>,
}

/// A tensor's description in model metadata: `-1` marks a dimension of any size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMetadata {
    /// The tensor's name.
    pub name: String,
    /// Its datatype.
    pub datatype: DataType,
    /// Its shape; `-1` for a dynamic dimension.
    pub shape: Vec<i64>,
}

impl TensorMetadata {
    /// A tensor description.
    pub fn new(name: impl Into<String>, datatype: DataType, shape: Vec<i64>) -> Self {
        TensorMetadata {
            name: name.into(),
            datatype,
            shape,
        }
    }
}

/// `GET /v2/models/{m}`: a model's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// The versions served under this name.
    pub versions: Vec<String>,
    /// The framework / runtime, e.g. `onnx_tract`.
    pub platform: String,
    /// The inputs.
    pub inputs: Vec<TensorMetadata>,
    /// The outputs.
    pub outputs: Vec<TensorMetadata>,
    /// Extra model parameters.
    #[serde(default, skip_serializing_if = "Parameters::is_empty")]
    pub parameters: Parameters,
}

/// `GET /v2`: the server's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetadata {
    /// The server's name.
    pub name: String,
    /// The server's version.
    pub version: String,
    /// The protocol extensions this server implements.
    pub extensions: Vec<String>,
}

/// `GET /v2/models/{m}/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReady {
    /// The model's name.
    pub name: String,
    /// Whether it is ready for inference.
    pub ready: bool,
}

/// `GET /v2/health/live`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerLive {
    /// Whether the server is live.
    pub live: bool,
}

/// `GET /v2/health/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerReady {
    /// Whether the server is ready.
    pub ready: bool,
}

/// The body of every error response: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}
