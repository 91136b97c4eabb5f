//! oxinfer's core: the Open Inference Protocol surface and the contracts every part shares.
//!
//! - [`DataType`]: the OIP datatypes and their sizes;
//! - [`Tensor`]: a named, shaped tensor holding its data without copying;
//! - [`protocol`]: requests, responses, metadata, parameters, and the REST JSON codec;
//! - [`runtime`]: the [`Runtime`] and [`Model`] traits that backends implement;
//! - [`manifest`]: the TOML manifest that lists the models to serve;
//! - [`source`]: model URIs (MLflow registry, S3, HTTPS) and the `[sources]` settings;
//! - [`Error`]: one error enum, each variant mapped to a protocol status by [`Error::code`].
//!
//! This crate has no async runtime and no HTTP stack in it, so runtimes and plugins can depend on
//! it without pulling in the server.

pub mod datatype;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod protocol;
pub mod runtime;
pub mod source;
pub mod tensor;
#[cfg(feature = "testing")]
pub mod testing;

pub use datatype::DataType;
pub use error::{Error, ErrorCode, Result};
pub use manifest::{Embeddings, Limits, Manifest, ModelEntry, Provenance, Scheduling, Warmup};
pub use runtime::{Embedder, LoadRequest, Model, ModelSignature, Runtime, Token};
pub use tensor::{Element, Shape, Tensor, TensorData, TensorName};

pub use bytes;
pub use half;
pub use smallvec;
