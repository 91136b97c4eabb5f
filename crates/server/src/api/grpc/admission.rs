//! Admission of gRPC inference messages before they are decoded.
//!
//! prost decodes a whole message before a handler sees it, and a small message can decode into
//! far more memory than it occupies: an empty `bytes_contents` element is 2 bytes on the wire
//! and a 32-byte handle in memory, an empty input tensor 2 bytes and a few hundred. So
//! `ModelInfer` and `ModelStreamInfer` messages go through [`AdmissionCodec`], which first
//! walks the message's wire format without allocating for its contents ([`scan`]):
//!
//! - for a model that is not served, only the model name, version and id are decoded (the
//!   handler then answers NOT_FOUND and records the request as for any unknown model);
//! - each input's name, datatype, shape and limits are checked against the model, as over
//!   REST, and a request that fails is not decoded further;
//! - the memory the decoded message will take is estimated from the scan and reserved against
//!   the in-flight budget, with the message's own bytes; over it, the request gets
//!   `RESOURCE_EXHAUSTED` and is not decoded.
//!
//! The codec has no state of its own (tonic creates it with `Default`): the server state and
//! the verdict for the handler travel in a task-local [`Admission`], which [`AdmissionLayer`]
//! sets around each inference call (and the stream handler around its reading task). Without
//! one (other methods, the client) the codec decodes as prost does.

use std::any::TypeId;
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::size_of;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http;
use bytes::{Buf, Bytes};
use oxinfer_core::protocol::json::check_shape;
use oxinfer_core::{DataType, Error};
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::{pb, status, version};
use crate::budget::{CountedBody, Reservation};
use crate::models::ServedModel;
use crate::pipeline;
use crate::state::AppState;

tokio::task_local! {
    static CALL: Arc<Admission>;
}

/// One inference call's admission state.
#[derive(Debug)]
pub(super) struct Admission {
    state: AppState,
    /// The bytes of the message being received, counted as they arrive; handed over to the
    /// message's own reservation once it is complete.
    wire: Reservation,
    /// What the codec decided about the last message, for the handler.
    verdict: Mutex<Option<Verdict>>,
    /// The caller's token (`[auth]`): a message for a model it may not use is treated like
    /// one for a model that is not served (nothing decoded, nothing reserved, no lookup), so
    /// that neither the answer nor its cost says whether the model exists.
    grant: Option<crate::auth::Grant>,
}

/// What the codec decided about a message it admitted or refused.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Decoded; its memory is reserved here, for the model its inputs were checked against
    /// (the handler's, unless the decoded name or version says otherwise: one lookup a call).
    Admitted(Reservation, Arc<ServedModel>),
    /// Not decoded past its model name, version and id, for this reason.
    Refused(Error),
}

impl Admission {
    /// Runs `future` (which reads and decodes this call's messages) with this admission.
    pub(super) fn scope<F: Future>(self: Arc<Self>, future: F) -> impl Future<Output = F::Output> {
        CALL.scope(self, future)
    }

    /// Whether `message` may be decoded whole; if not, the bytes to decode instead (its model
    /// name, version and id).
    fn admit(&self, message: &[u8]) -> Option<Vec<u8>> {
        let mut verdict = self.verdict.lock().unwrap_or_else(|e| e.into_inner());
        // This message's bytes now belong to its own reservation (or are given back); bytes of
        // a next message on a stream stay counted.
        self.wire.release(message.len());
        *verdict = None;
        let Ok(scanned) = scan(message) else {
            // Never left to prost: it would decode what the scan could not look at.
            *verdict = Some(Verdict::Refused(Error::invalid(
                "the message is not a well-formed ModelInferRequest",
            )));
            return Some(Vec::new());
        };
        if self
            .grant
            .as_ref()
            .is_some_and(|grant| !grant.may_use(&scanned.model_name))
        {
            // The handler refuses it (PERMISSION_DENIED).
            return Some(header(message));
        }
        let model = match self
            .state
            .repository
            .get(&scanned.model_name, version(&scanned.model_version))
        {
            Ok(model) => model,
            // The handler looks the model up again and reports why.
            Err(_) => return Some(header(message)),
        };
        if scanned.input_count > MAX_SCANNED_INPUTS {
            *verdict = Some(Verdict::Refused(Error::invalid(format!(
                "the request has {} inputs; at most {MAX_SCANNED_INPUTS} are accepted",
                scanned.input_count
            ))));
            return Some(header(message));
        }
        for input in &scanned.inputs {
            if input.dims > MAX_DIMS {
                *verdict = Some(Verdict::Refused(Error::invalid(format!(
                    "input '{}': its shape has {} dimensions, more than the {MAX_DIMS} accepted",
                    input.name, input.dims
                ))));
                return Some(header(message));
            }
            let checked = input
                .datatype
                .parse::<DataType>()
                .map_err(|e| Error::invalid(format!("input '{}': {e}", input.name)))
                .and_then(|datatype| {
                    let (shape, _) = check_shape(&input.name, scanned.shape(input))?;
                    pipeline::check_before_decoding(&model, &input.name, datatype, &shape)
                });
            if let Err(e) = checked {
                *verdict = Some(Verdict::Refused(e));
                return Some(header(message));
            }
        }
        let needed = message.len().saturating_add(scanned.decoded_bytes);
        match self.state.budget.reserve(needed) {
            Ok(reservation) => {
                *verdict = Some(Verdict::Admitted(reservation, model));
                None
            }
            Err(e) => {
                *verdict = Some(Verdict::Refused(e));
                Some(header(message))
            }
        }
    }
}

/// The codec's verdict on the message the handler just received, if the codec judged it.
pub(super) fn take_verdict() -> Option<Verdict> {
    CALL.try_with(|a| a.verdict.lock().unwrap_or_else(|e| e.into_inner()).take())
        .ok()
        .flatten()
}

/// The admission of the current call (for a stream handler to carry into its reading task).
pub(super) fn current() -> Option<Arc<Admission>> {
    CALL.try_with(Arc::clone).ok()
}

/// prost's codec, with [`Admission`] in front of the decoder for `ModelInferRequest`, and
/// buffers sized to the message rather than tonic's 8 KiB default ([`CODEC_BUFFER_BYTES`]).
#[derive(Debug)]
pub struct AdmissionCodec<T, U>(PhantomData<(T, U)>);

/// The first size of a call's read buffer and of each response's write buffer. tonic starts
/// both at 8 KiB; most inference messages are a few hundred bytes, and two 8 KiB blocks per
/// call in flight added up: 1,024 small calls in flight (256 connections, 4 streams each) took
/// 5-6 MiB more at their peak. Neither buffer is limited by this: the read buffer is grown to
/// a message's length once its header is read (tonic), and the write buffer to the encoded
/// length before encoding ([`SizedEncoder`]).
const CODEC_BUFFER_BYTES: usize = 1024;

/// How many encoded bytes of a response stream tonic gathers before it yields: its default.
const CODEC_YIELD_BYTES: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER_BYTES, CODEC_YIELD_BYTES)
}

impl<T, U> Default for AdmissionCodec<T, U> {
    fn default() -> Self {
        AdmissionCodec(PhantomData)
    }
}

impl<T, U> Codec for AdmissionCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = AdmissionDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder(ProstEncoder::new(buffer_settings()))
    }

    fn decoder(&mut self) -> Self::Decoder {
        AdmissionDecoder(ProstDecoder::new(buffer_settings()))
    }
}

/// The encoder of [`AdmissionCodec`]: prost's, after reserving the message's encoded length,
/// so that a response is written into one allocation of its size. prost alone grows the
/// buffer as it writes, to at least twice its capacity each time: three 200 KB outputs were
/// copied through two reallocations into an 800 KB buffer. (Outputs are encoded here on
/// `ModelStreamInfer` and in compressed responses; an uncompressed `ModelInfer` response has
/// them appended after the message by [`super::tail`], without a copy.)
#[derive(Debug)]
pub struct SizedEncoder<T>(ProstEncoder<T>);

impl<T: Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The decoder of [`AdmissionCodec`].
#[derive(Debug)]
pub struct AdmissionDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + 'static> Decoder for AdmissionDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() == TypeId::of::<pb::ModelInferRequest>()
            && buf.chunk().len() == buf.remaining()
            && let Ok(Some(header)) = CALL.try_with(|a| a.admit(buf.chunk()))
        {
            buf.advance(buf.remaining());
            return U::decode(header.as_slice())
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()));
        }
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Sets an [`Admission`] around each `ModelInfer` / `ModelStreamInfer` call, and counts the
/// call's request body against the in-flight budget as it arrives. Also applies
/// `[server] grpc_compression` to every call ([`compression_rule`]), and appends a
/// `ModelInfer` response's raw outputs to its encoding ([`super::tail`]).
///
/// Calls to the inference service go to it straight from here; tonic's routes (the inner
/// service) have the others. They would only find the same service, after matching the
/// path, recording it as a URL parameter and boxing the request and response bodies once more:
/// about five allocations of every call.
#[derive(Clone)]
pub(super) struct AdmissionLayer {
    pub(super) state: AppState,
    pub(super) inference: Inference,
}

/// The inference service, as [`super::serve_grpc`] configures it.
pub(super) type Inference =
    pb::grpc_inference_service_server::GrpcInferenceServiceServer<super::GrpcService>;

/// The path prefix of the inference service's methods.
const INFERENCE_PATH: &str = "/inference.GRPCInferenceService/";

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            inner,
            state: self.state.clone(),
            inference: self.inference.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] makes.
#[derive(Clone)]
pub(super) struct Admit<S> {
    inner: S,
    state: AppState,
    inference: Inference,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

type Answer = Result<http::Response<tonic::body::Body>, Infallible>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for Admit<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = BoxFuture<Answer>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        compression_rule(
            self.state.listening.transport.grpc_compression,
            request.headers_mut(),
        );
        // A call goes on to the inference service for its paths, else to tonic's routes.
        let (inference, inner) = (&mut self.inference, &mut self.inner);
        let mut forward = |request: http::Request<tonic::body::Body>| -> BoxFuture<Answer> {
            if request.uri().path().starts_with(INFERENCE_PATH) {
                // Always ready (generated code); its future is already boxed.
                inference.call(request)
            } else {
                Box::pin(inner.call(request))
            }
        };
        let path = request.uri().path();
        let unary = path.ends_with("/ModelInfer");
        if !(unary || path.ends_with("/ModelStreamInfer")) {
            return forward(request);
        }
        let admission = Arc::new(Admission {
            state: self.state.clone(),
            wire: self.state.budget.reservation(),
            verdict: Mutex::new(None),
            grant: request.extensions().get::<crate::auth::Grant>().cloned(),
        });
        let wire = admission.wire.clone();
        let request = request.map(|body| {
            tonic::body::Body::new(CountedBody::new(body, wire, |e| Box::new(status(e))))
        });
        let call = admission.scope(forward(request));
        if !unary {
            return Box::pin(call);
        }
        // The handler may have left the raw outputs to be appended to the encoded message.
        Box::pin(async move { call.await.map(super::tail::wrap) })
    }
}

/// tonic compresses a response whenever the client's `grpc-accept-encoding` lists gzip, and
/// grpcio clients (tritonclient) list it by default: on big tensors compression costs far more
/// than it saves on a fast network. So, unless `grpc_compression = "always"`, the header is
/// taken away from requests that did not come compressed themselves (`request`, the default) or
/// from every request (`never`), and the response goes out uncompressed.
pub(super) fn compression_rule(
    rule: oxinfer_core::manifest::GrpcCompression,
    headers: &mut http::HeaderMap,
) {
    use oxinfer_core::manifest::GrpcCompression;
    let keep = match rule {
        GrpcCompression::Always => true,
        GrpcCompression::Never => false,
        GrpcCompression::Request => headers
            .get("grpc-encoding")
            .is_some_and(|v| v.as_bytes() != b"identity"),
    };
    if !keep {
        headers.remove("grpc-accept-encoding");
    }
}

/// What [`scan`] found in a `ModelInferRequest`.
#[derive(Debug, Default)]
pub(super) struct Scanned<'a> {
    model_name: Cow<'a, str>,
    model_version: Cow<'a, str>,
    /// The first [`MAX_SCANNED_INPUTS`] inputs.
    inputs: Vec<ScannedInput<'a>>,
    /// The inputs' first [`MAX_DIMS`] dimensions each, one input after the other (one
    /// allocation for all of them; [`Scanned::shape`]).
    dims: Vec<i64>,
    /// How many inputs the message has.
    input_count: usize,
    /// An upper estimate of the heap memory the decoded message takes, beyond the message's
    /// own bytes (which `bytes` fields share).
    decoded_bytes: usize,
}

/// An input as the scan read it: its strings borrowed from the message where they are UTF-8
/// (they always are in a message prost accepts), nothing allocated for it.
#[derive(Debug, Default)]
struct ScannedInput<'a> {
    name: Cow<'a, str>,
    datatype: Cow<'a, str>,
    /// Where its first [`MAX_DIMS`] dimensions are in [`Scanned::dims`].
    shape: Range<usize>,
    /// How many dimensions the shape has.
    dims: usize,
}

impl Scanned<'_> {
    /// An input's first [`MAX_DIMS`] dimensions.
    fn shape(&self, input: &ScannedInput<'_>) -> &[i64] {
        &self.dims[input.shape.clone()]
    }
}

/// A message's fields 1-3 (model name, version, id) as they were, to decode alone: what is
/// decoded of a message that is not admitted.
fn header(message: &[u8]) -> Vec<u8> {
    let mut header = Vec::new();
    let mut fields = Fields(message);
    while let Some(field) = fields.next() {
        match field {
            Ok((1..=3, Value::Len(_), whole)) => header.extend_from_slice(whole),
            Ok(_) => {}
            Err(Malformed) => break,
        }
    }
    header
}

/// The most inputs a message is read for: no model takes more, and the scan must not itself
/// allocate in proportion to a message of millions of empty inputs.
const MAX_SCANNED_INPUTS: usize = 4096;

/// The most dimensions an input's shape may have.
const MAX_DIMS: usize = 64;

/// A malformed message (left to prost to report).
#[derive(Debug)]
pub(super) struct Malformed;

/// One field of a protobuf message.
enum Value<'a> {
    Varint(u64),
    Fixed,
    Len(&'a [u8]),
}

/// A field's number, its value, and its bytes as they were (tag included).
type Field<'a> = (u64, Value<'a>, &'a [u8]);

/// Reads protobuf fields one at a time, without allocating.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or(Malformed)?;
            self.0 = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(Malformed)
    }

    /// The next field: its number, value, and its bytes as they were (tag included).
    fn next(&mut self) -> Option<Result<Field<'a>, Malformed>> {
        if self.0.is_empty() {
            return None;
        }
        let start = self.0;
        Some((|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => self.skip(8).map(|_| Value::Fixed)?,
                5 => self.skip(4).map(|_| Value::Fixed)?,
                2 => {
                    let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
                    Value::Len(self.skip(len)?)
                }
                // A group (deprecated, but prost skips unknown ones): skipped as a whole.
                3 => self.skip_group(key >> 3, 0).map(|()| Value::Fixed)?,
                _ => return Err(Malformed),
            };
            let used = start.len() - self.0.len();
            Ok((key >> 3, value, &start[..used]))
        })())
    }

    /// Skips a group's fields up to its end tag, nested groups included (at most 32 deep).
    fn skip_group(&mut self, number: u64, depth: usize) -> Result<(), Malformed> {
        if depth > 32 {
            return Err(Malformed);
        }
        loop {
            let key = self.varint()?;
            match key & 7 {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.skip(8)?;
                }
                5 => {
                    self.skip(4)?;
                }
                2 => {
                    let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
                    self.skip(len)?;
                }
                3 => self.skip_group(key >> 3, depth + 1)?,
                4 if key >> 3 == number => return Ok(()),
                _ => return Err(Malformed),
            }
        }
    }

    fn skip(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

/// Room a `Vec` may have for `n` elements of `size` bytes (capacity grows by doubling from at
/// least 8 elements).
fn vec_bytes(n: usize, size: usize) -> usize {
    match n {
        0 => 0,
        n => n.saturating_mul(2).max(8).saturating_mul(size),
    }
}

/// A decoded string or byte field of `len` bytes: a `Vec<u8>` that grows from empty takes at
/// least 8 bytes (Rust's smallest non-zero capacity for bytes), however short the field.
fn string_bytes(len: usize) -> usize {
    match len {
        0 => 0,
        len => len.max(8),
    }
}

fn text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// A map entry (`map<string, InferParameter>`): the key and a string value are copied; the
/// hash table holds the pair and a control byte, with room to grow (at least 4 slots and 16
/// control bytes for its first entry).
fn map_entry_bytes(entry: &[u8]) -> usize {
    // The key and a string value: each at least `string_bytes`' 8.
    (4 * (size_of::<(String, pb::InferParameter)>() + 1) + 16 + 2 * 8).saturating_add(entry.len())
}

/// The number of values in a packed run of varints.
fn packed_varints(run: &[u8]) -> usize {
    run.iter().filter(|&&b| b < 0x80).count()
}

/// Estimates an `InferTensorContents`' decoded size.
fn contents_bytes(message: &[u8]) -> Result<usize, Malformed> {
    let mut counts = [0usize; 9];
    let mut fields = Fields(message);
    while let Some(field) = fields.next() {
        let (number, value, _) = field?;
        let n = match (number, value) {
            (1..=5, Value::Len(run)) => packed_varints(run),
            (6, Value::Len(run)) => run.len() / 4,
            (7, Value::Len(run)) => run.len() / 8,
            (1..=8, _) => 1,
            _ => 0,
        };
        if let Some(c) = counts.get_mut(number as usize) {
            *c = c.saturating_add(n);
        }
    }
    let sizes = [0, 1, 4, 8, 4, 8, 4, 8, size_of::<Bytes>()];
    Ok(counts
        .iter()
        .zip(sizes)
        .fold(0, |n, (&c, size)| n.saturating_add(vec_bytes(c, size))))
}

/// Estimates a tensor message's decoded size (an input, or a requested output), reading an
/// input's name, datatype and shape.
fn tensor_bytes<'a>(
    message: &'a [u8],
    input: &mut ScannedInput<'a>,
    dims: &mut Vec<i64>,
) -> Result<usize, Malformed> {
    let mut bytes = 0usize;
    let mut fields = Fields(message);
    let mut shape = 0usize;
    let start = dims.len();
    while let Some(field) = fields.next() {
        let (number, value, _) = field?;
        bytes = bytes.saturating_add(match (number, value) {
            (1, Value::Len(s)) => {
                input.name = text(s);
                string_bytes(s.len())
            }
            (2, Value::Len(s)) => {
                input.datatype = text(s);
                string_bytes(s.len())
            }
            (3, Value::Len(run)) => {
                let mut run = Fields(run);
                while !run.0.is_empty() {
                    let dim = run.varint()?;
                    shape += 1;
                    if shape <= MAX_DIMS {
                        dims.push(dim as i64);
                    }
                }
                0
            }
            (3, Value::Varint(dim)) => {
                shape += 1;
                if shape <= MAX_DIMS {
                    dims.push(dim as i64);
                }
                0
            }
            (4, Value::Len(entry)) => map_entry_bytes(entry),
            (5, Value::Len(contents)) => contents_bytes(contents)?,
            _ => 0,
        });
    }
    input.dims = shape;
    input.shape = start..dims.len();
    Ok(bytes.saturating_add(vec_bytes(shape, 8)))
}

/// Scans a `ModelInferRequest` in its wire format.
pub(super) fn scan(message: &[u8]) -> Result<Scanned<'_>, Malformed> {
    let mut scanned = Scanned::default();
    let mut bytes = 0usize;
    let (mut inputs, mut outputs, mut raws) = (0usize, 0usize, 0usize);
    let mut fields = Fields(message);
    while let Some(field) = fields.next() {
        let (number, value, _) = field?;
        bytes = bytes.saturating_add(match (number, value) {
            (1..=3, Value::Len(s)) => {
                match number {
                    1 => scanned.model_name = text(s),
                    2 => scanned.model_version = text(s),
                    _ => {}
                }
                string_bytes(s.len())
            }
            (4, Value::Len(entry)) => map_entry_bytes(entry),
            (5, Value::Len(tensor)) => {
                inputs += 1;
                let mut input = ScannedInput::default();
                let n = if scanned.inputs.len() < MAX_SCANNED_INPUTS {
                    tensor_bytes(tensor, &mut input, &mut scanned.dims)?
                } else {
                    // Not kept: its dimensions are not either.
                    tensor_bytes(tensor, &mut input, &mut Vec::new())?
                };
                if scanned.inputs.len() < MAX_SCANNED_INPUTS {
                    scanned.inputs.push(input);
                }
                n
            }
            (6, Value::Len(tensor)) => {
                outputs += 1;
                // A requested output: read for its size only.
                tensor_bytes(tensor, &mut ScannedInput::default(), &mut Vec::new())?
            }
            (7, Value::Len(_)) => {
                raws += 1;
                0
            }
            _ => 0,
        });
    }
    scanned.input_count = inputs;
    scanned.decoded_bytes = bytes
        .saturating_add(vec_bytes(
            inputs,
            size_of::<pb::model_infer_request::InferInputTensor>(),
        ))
        .saturating_add(vec_bytes(
            outputs,
            size_of::<pb::model_infer_request::InferRequestedOutputTensor>(),
        ))
        .saturating_add(vec_bytes(raws, size_of::<Bytes>()));
    Ok(scanned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use proptest::prelude::*;

    /// The heap memory a decoded request holds, by its vectors' capacities and its strings.
    fn heap(r: &pb::ModelInferRequest) -> usize {
        let params = |p: &std::collections::HashMap<String, pb::InferParameter>| {
            p.capacity() * (size_of::<(String, pb::InferParameter)>() + 1)
                + p.iter()
                    .map(|(k, v)| {
                        k.capacity()
                            + match &v.parameter_choice {
                                Some(pb::infer_parameter::ParameterChoice::StringParam(s)) => {
                                    s.capacity()
                                }
                                _ => 0,
                            }
                    })
                    .sum::<usize>()
        };
        let contents = |c: &pb::InferTensorContents| {
            c.bool_contents.capacity()
                + c.int_contents.capacity() * 4
                + c.int64_contents.capacity() * 8
                + c.uint_contents.capacity() * 4
                + c.uint64_contents.capacity() * 8
                + c.fp32_contents.capacity() * 4
                + c.fp64_contents.capacity() * 8
                + c.bytes_contents.capacity() * size_of::<Bytes>()
        };
        r.model_name.capacity()
            + r.model_version.capacity()
            + r.id.capacity()
            + params(&r.parameters)
            + r.inputs.capacity() * size_of::<InferInputTensor>()
            + r.inputs
                .iter()
                .map(|i| {
                    i.name.capacity()
                        + i.datatype.capacity()
                        + i.shape.capacity() * 8
                        + params(&i.parameters)
                        + i.contents.as_ref().map_or(0, contents)
                })
                .sum::<usize>()
            + r.outputs.capacity() * size_of::<InferRequestedOutputTensor>()
            + r.outputs
                .iter()
                .map(|o| o.name.capacity() + params(&o.parameters))
                .sum::<usize>()
            + r.raw_input_contents.capacity() * size_of::<Bytes>()
    }

    fn string_param(s: &str) -> pb::InferParameter {
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(s.into())),
        }
    }

    fn request() -> impl Strategy<Value = pb::ModelInferRequest> {
        let contents = (
            prop::collection::vec(any::<bool>(), 0..40),
            prop::collection::vec(any::<i32>(), 0..40),
            prop::collection::vec(any::<i64>(), 0..40),
            prop::collection::vec(any::<f32>(), 0..40),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..200),
        )
            .prop_map(|(b, i, l, f, s)| pb::InferTensorContents {
                bool_contents: b,
                int_contents: i,
                int64_contents: l,
                fp32_contents: f,
                bytes_contents: s.into_iter().map(Bytes::from).collect(),
                ..Default::default()
            });
        let input = (
            "[a-z]{0,8}",
            prop::collection::vec(-2i64..100, 0..6),
            prop::option::of(contents),
            prop::collection::hash_map("[a-z]{0,4}", "[a-z]{0,4}", 0..4),
        )
            .prop_map(|(name, shape, contents, params)| InferInputTensor {
                name,
                datatype: "FP32".into(),
                shape,
                contents,
                parameters: params
                    .into_iter()
                    .map(|(k, v)| (k, string_param(&v)))
                    .collect(),
            });
        (
            "[a-z]{0,8}",
            prop::collection::vec(input, 0..60),
            prop::collection::vec("[a-z]{0,3}", 0..30),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..30),
        )
            .prop_map(|(model, inputs, outputs, raws)| pb::ModelInferRequest {
                model_name: model,
                model_version: "1".into(),
                id: "req".into(),
                inputs,
                outputs: outputs
                    .into_iter()
                    .map(|name| InferRequestedOutputTensor {
                        name,
                        ..Default::default()
                    })
                    .collect(),
                raw_input_contents: raws.into_iter().map(Bytes::from).collect(),
                ..Default::default()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The scan never estimates less than what prost allocates, and reads the header and
        /// inputs as prost does.
        #[test]
        fn the_estimate_covers_what_prost_allocates(r in request()) {
            let wire = r.encode_to_vec();
            let scanned = scan(&wire).unwrap();
            let decoded = pb::ModelInferRequest::decode(Bytes::from(wire.clone())).unwrap();
            prop_assert!(scanned.decoded_bytes >= heap(&decoded),
                "estimate {} < heap {}", scanned.decoded_bytes, heap(&decoded));
            prop_assert_eq!(&scanned.model_name, &decoded.model_name);
            prop_assert_eq!(scanned.inputs.len(), decoded.inputs.len());
            for (s, d) in scanned.inputs.iter().zip(&decoded.inputs) {
                prop_assert_eq!(&s.name, &d.name);
                prop_assert_eq!(scanned.shape(s), d.shape.as_slice());
            }
            let header = pb::ModelInferRequest::decode(header(&wire).as_slice()).unwrap();
            prop_assert_eq!(header.model_name, decoded.model_name);
            prop_assert_eq!(header.id, decoded.id);
            prop_assert!(header.inputs.is_empty());
        }

        /// Arbitrary bytes never panic the scanner.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = scan(&bytes);
        }
    }

    #[test]
    fn a_bomb_of_empty_elements_is_estimated_at_its_decoded_size() {
        let r = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "BYTES".into(),
                shape: vec![100_000],
                contents: Some(pb::InferTensorContents {
                    bytes_contents: vec![Bytes::new(); 100_000],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let wire = r.encode_to_vec();
        let scanned = scan(&wire).unwrap();
        assert!(wire.len() < 250_000);
        assert!(scanned.decoded_bytes >= 100_000 * size_of::<Bytes>());
        let empty_inputs = pb::ModelInferRequest {
            inputs: vec![InferInputTensor::default(); 10_000],
            ..Default::default()
        };
        let wire = empty_inputs.encode_to_vec();
        let scanned = scan(&wire).unwrap();
        assert!(scanned.decoded_bytes >= 10_000 * size_of::<InferInputTensor>());
        assert_eq!(scanned.input_count, 10_000);
        assert_eq!(
            scanned.inputs.len(),
            MAX_SCANNED_INPUTS,
            "the scan keeps a bounded list"
        );
    }

    #[test]
    fn responses_are_compressed_only_as_the_rule_says() {
        use oxinfer_core::manifest::GrpcCompression;
        let accepts = |rule, encoding: Option<&'static str>| {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "grpc-accept-encoding",
                http::HeaderValue::from_static("identity,deflate,gzip"),
            );
            if let Some(e) = encoding {
                headers.insert("grpc-encoding", http::HeaderValue::from_static(e));
            }
            compression_rule(rule, &mut headers);
            headers.contains_key("grpc-accept-encoding")
        };
        assert!(!accepts(GrpcCompression::Request, None));
        assert!(!accepts(GrpcCompression::Request, Some("identity")));
        assert!(accepts(GrpcCompression::Request, Some("gzip")));
        assert!(accepts(GrpcCompression::Always, None));
        assert!(!accepts(GrpcCompression::Never, Some("gzip")));
    }

    /// A service that answers every request with the same response.
    struct Answer(pb::ModelInferResponse);

    impl tonic::server::UnaryService<pb::ModelInferRequest> for Answer {
        type Response = pb::ModelInferResponse;
        type Future = std::future::Ready<Result<tonic::Response<Self::Response>, Status>>;

        fn call(&mut self, _: tonic::Request<pb::ModelInferRequest>) -> Self::Future {
            std::future::ready(Ok(tonic::Response::new(self.0.clone())))
        }
    }

    #[tokio::test]
    async fn responses_are_encoded_whole_through_buffers_that_start_small() {
        use http_body_util::BodyExt;
        let mut codec = AdmissionCodec::<pb::ModelInferResponse, pb::ModelInferRequest>::default();
        for settings in [
            format!("{:?}", codec.encoder().buffer_settings()),
            format!("{:?}", codec.decoder().buffer_settings()),
        ] {
            assert!(settings.contains("buffer_size: 1024,"), "{settings}");
        }
        // Three outputs far larger than the first buffer, through tonic's server path with
        // this codec: the framed message is the response, byte for byte.
        let raw: Vec<Bytes> = (0..3u8)
            .map(|i| Bytes::from(vec![i; 200_000 + usize::from(i)]))
            .collect();
        let response = pb::ModelInferResponse {
            model_name: "m".into(),
            id: "42".into(),
            raw_output_contents: raw,
            ..Default::default()
        };
        let request = pb::ModelInferRequest {
            model_name: "m".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(request.len() as u32).to_be_bytes());
        framed.extend_from_slice(&request);
        let call = http::Request::builder()
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                Bytes::from(framed),
            )))
            .unwrap();
        let answered = tonic::server::Grpc::new(codec)
            .unary(Answer(response.clone()), call)
            .await;
        let body = answered.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body[0], 0, "not compressed");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, response.encoded_len());
        assert_eq!(body.len(), 5 + len);
        assert_eq!(
            pb::ModelInferResponse::decode(&body[5..]).unwrap(),
            response
        );
    }

    #[test]
    fn groups_are_skipped_as_prost_skips_them() {
        let r = pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                contents: Some(pb::InferTensorContents {
                    bytes_contents: vec![Bytes::new(); 1000],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut wire = r.encode_to_vec();
        // Field 99 as a group holding a varint and a nested group: start 99, 1 = 5, start 98,
        // end 98, end 99.
        let tag = |field: u64, kind: u64| {
            let mut out = Vec::new();
            prost::encoding::encode_varint((field << 3) | kind, &mut out);
            out
        };
        wire.extend(tag(99, 3));
        wire.extend([0x08, 0x05]);
        wire.extend(tag(98, 3));
        wire.extend(tag(98, 4));
        wire.extend(tag(99, 4));
        assert!(
            pb::ModelInferRequest::decode(wire.as_slice()).is_ok(),
            "prost takes it"
        );
        let scanned = scan(&wire).unwrap();
        assert!(scanned.decoded_bytes >= 1000 * size_of::<Bytes>());
        assert_eq!(scanned.inputs[0].name, "x");
        let mut unterminated = r.encode_to_vec();
        unterminated.extend(tag(99, 3));
        assert!(scan(&unterminated).is_err());
    }

    #[test]
    fn long_shapes_are_refused_and_truncated_messages_are_malformed() {
        let r = pb::ModelInferRequest {
            inputs: vec![InferInputTensor {
                shape: vec![1; 1000],
                ..Default::default()
            }],
            ..Default::default()
        };
        let wire = r.encode_to_vec();
        let scanned = scan(&wire).unwrap();
        assert_eq!(scanned.shape(&scanned.inputs[0]).len(), MAX_DIMS);
        assert_eq!(scanned.inputs[0].dims, 1000);
        assert!(scan(&wire[..wire.len() - 1]).is_err());
    }
}
