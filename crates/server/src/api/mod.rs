//! The protocol front ends. Each decodes its wire format, calls
//! [`pipeline::handle`](crate::pipeline::handle) for inference or an [`admin`](crate::admin)
//! operation for the rest, and encodes the answer; neither holds logic of its own.

pub(crate) mod embeddings;
pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod rest;
