//! `ModelInfer` responses whose raw output contents go out without being copied.
//!
//! tonic encodes a response message into one buffer, so each output tensor (already bytes the
//! model made) would be copied whole into it: for a 64 MB tensor, 64 MB more memory and a 64 MB
//! copy per response. Protobuf lets a message's fields come in any order and lets entries of a
//! repeated field be appended to an encoded message, so instead:
//!
//! - the handler, through [`respond`], takes `raw_output_contents` out of the message it gives
//!   tonic and puts the tensors in the response's extensions ([`RawTail`]), only when that
//!   goes out uncompressed ([`appendable`]): a compressed message cannot be appended to; and only
//!   from [`WORTH_APPENDING`] bytes of outputs;
//! - [`wrap`] (in [`super::admission::Admit`], outside tonic) sends tonic's encoded message
//!   followed by each tensor as a field-6 entry (a few bytes of key and length, then the
//!   tensor's own bytes, handed to hyper as they are), with the gRPC frame's length raised to
//!   match.
//!
//! A client decodes the same message as before (the field order differs; protobuf decoders
//! accept any order). Streams (`ModelStreamInfer`) keep tonic's encoding.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http;
use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;

use super::pb;

/// The raw output bytes from which appending pays: below it, copying them into tonic's buffer
/// costs less than the pieces and the extra body layer (a tiny model's few bytes).
const WORTH_APPENDING: usize = 16 * 1024;

/// `ModelInferResponse.raw_output_contents`'s field number.
const RAW_OUTPUT_CONTENTS: u32 = 6;

/// The gRPC message prefix: a compressed flag and a big-endian length.
const PREFIX: usize = 5;

/// Raw output contents taken out of a `ModelInferResponse`, to be appended to its encoding.
#[derive(Debug, Clone)]
struct RawTail(Vec<Bytes>);

impl RawTail {
    /// The bytes the entries add to the message.
    fn encoded_len(&self) -> usize {
        self.0.iter().fold(0usize, |n, b| {
            n.saturating_add(key_len(RAW_OUTPUT_CONTENTS))
                .saturating_add(encoded_len_varint(b.len() as u64))
                .saturating_add(b.len())
        })
    }
}

/// Whether the response to a request with these headers goes out uncompressed, so that raw
/// contents can be appended to it. tonic compresses when the request's
/// `grpc-accept-encoding` lists an encoding the server sends (gzip); the admission layer has
/// already removed that header where `[server] grpc_compression` says not to compress.
pub(super) fn appendable(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get("grpc-accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| !v.split(',').any(|e| e.trim() == "gzip"))
}

/// The handler's response: its raw outputs left for [`wrap`] to append when the response is
/// `appendable` and they are worth it, else the message as it is.
pub(super) fn respond(
    mut response: pb::ModelInferResponse,
    appendable: bool,
) -> tonic::Response<pb::ModelInferResponse> {
    let raw_bytes = response
        .raw_output_contents
        .iter()
        .fold(0usize, |n, b| n.saturating_add(b.len()));
    if !appendable || raw_bytes < WORTH_APPENDING {
        return tonic::Response::new(response);
    }
    let raw = std::mem::take(&mut response.raw_output_contents);
    let mut response = tonic::Response::new(response);
    response.extensions_mut().insert(RawTail(raw));
    response
}

/// Appends a response's [`RawTail`], if it has one, to its body.
pub(super) fn wrap(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    match response.extensions_mut().remove::<RawTail>() {
        Some(tail) => response.map(|body| {
            tonic::body::Body::new(TailBody {
                inner: body,
                state: State::Collecting {
                    head: BytesMut::new(),
                    tail,
                },
            })
        }),
        None => response,
    }
}

/// A unary response body with raw contents appended to its one message.
struct TailBody {
    inner: tonic::body::Body,
    state: State,
}

enum State {
    /// Reading tonic's encoded message (small: the raw contents are not in it).
    Collecting {
        head: BytesMut,
        tail: RawTail,
    },
    /// Sending these pieces, then the trailers.
    Sending {
        pieces: VecDeque<Bytes>,
        trailers: Option<http::HeaderMap>,
    },
    Done,
}

/// tonic's encoded message `head` (prefix and message) with `tail` appended: the pieces to
/// send, or why they cannot be.
fn assemble(head: &[u8], tail: RawTail) -> Result<VecDeque<Bytes>, Status> {
    let malformed = || Status::internal("the response could not be assembled");
    if head.len() < PREFIX || head[0] != 0 {
        return Err(malformed());
    }
    let declared = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let message = &head[PREFIX..];
    if declared != message.len() {
        return Err(malformed());
    }
    let total = message.len().saturating_add(tail.encoded_len());
    let length = u32::try_from(total).map_err(|_| {
        Status::resource_exhausted(format!(
            "the response is {total} bytes, over gRPC's largest message (4 GiB)"
        ))
    })?;
    let mut pieces = VecDeque::with_capacity(2 * tail.0.len() + 1);
    let mut first = BytesMut::with_capacity(head.len() + 16);
    first.put_u8(0);
    first.put_u32(length);
    first.put_slice(message);
    let mut prefix = first;
    for raw in tail.0 {
        encode_key(RAW_OUTPUT_CONTENTS, WireType::LengthDelimited, &mut prefix);
        encode_varint(raw.len() as u64, &mut prefix);
        if raw.len() <= 64 {
            // A small entry goes with its prefix.
            prefix.put_slice(&raw);
        } else {
            pieces.push_back(prefix.split().freeze());
            pieces.push_back(raw);
        }
    }
    if !prefix.is_empty() {
        pieces.push_back(prefix.freeze());
    }
    Ok(pieces)
}

/// Whether trailers say the call succeeded.
fn succeeded(trailers: &http::HeaderMap) -> bool {
    trailers
        .get("grpc-status")
        .is_none_or(|s| s.as_bytes() == b"0")
}

impl Body for TailBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Collecting { head, .. } => {
                    let trailers = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx))
                    {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                head.put_slice(&data);
                                continue;
                            }
                            Err(frame) => frame.into_trailers().ok(),
                        },
                        Some(Err(e)) => {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                        None => None,
                    };
                    let State::Collecting { head, tail } =
                        std::mem::replace(&mut this.state, State::Done)
                    else {
                        unreachable!("matched above")
                    };
                    let failed = trailers.as_ref().is_some_and(|t| !succeeded(t));
                    this.state = if failed || head.is_empty() {
                        // An error after the message (or none): sent as tonic made it.
                        State::Sending {
                            pieces: VecDeque::from([head.freeze()]),
                            trailers,
                        }
                    } else {
                        match assemble(&head, tail) {
                            Ok(pieces) => State::Sending { pieces, trailers },
                            Err(status) => {
                                tracing::warn!("gRPC response not sent: {}", status.message());
                                let mut trailers = http::HeaderMap::new();
                                let _ = status.add_header(&mut trailers);
                                State::Sending {
                                    pieces: VecDeque::new(),
                                    trailers: Some(trailers),
                                }
                            }
                        }
                    };
                }
                State::Sending { pieces, trailers } => {
                    if let Some(piece) = pieces.pop_front() {
                        if piece.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(piece))));
                    }
                    let trailers = trailers.take();
                    this.state = State::Done;
                    if let Some(trailers) = trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prost::Message;

    fn response(raw: Vec<Bytes>) -> pb::ModelInferResponse {
        pb::ModelInferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: "r-1".into(),
            outputs: raw
                .iter()
                .enumerate()
                .map(|(i, b)| pb::model_infer_response::InferOutputTensor {
                    name: format!("out{i}"),
                    datatype: "UINT8".into(),
                    shape: vec![b.len() as i64],
                    ..Default::default()
                })
                .collect(),
            raw_output_contents: raw,
            ..Default::default()
        }
    }

    /// tonic's encoding of `message`: the prefix, then the message.
    fn framed(message: &pb::ModelInferResponse) -> Bytes {
        let body = message.encode_to_vec();
        let mut out = BytesMut::new();
        out.put_u8(0);
        out.put_u32(body.len() as u32);
        out.put_slice(&body);
        out.freeze()
    }

    fn trailers(status: &str) -> http::HeaderMap {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_str(status).unwrap());
        t
    }

    /// What `wrap` sends for tonic's `chunks` and `trailers`, with `tail` in the extensions.
    async fn send(
        chunks: Vec<Bytes>,
        trailers: http::HeaderMap,
        tail: RawTail,
    ) -> (Vec<Bytes>, Option<http::HeaderMap>) {
        let frames: Vec<Result<Frame<Bytes>, Status>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(c)))
            .chain([Ok(Frame::trailers(trailers))])
            .collect();
        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
        let mut response = http::Response::new(tonic::body::Body::new(body));
        response.extensions_mut().insert(tail);
        let mut body = wrap(response).into_body();
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(d) => data.push(d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    fn decode(data: &[Bytes]) -> pb::ModelInferResponse {
        let all: Vec<u8> = data.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(all[0], 0, "uncompressed");
        let len = u32::from_be_bytes(all[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, all.len() - 5, "the prefix gives the message's length");
        pb::ModelInferResponse::decode(&all[5..]).unwrap()
    }

    #[tokio::test]
    async fn appended_contents_decode_as_the_whole_message() {
        let big = Bytes::from(vec![7u8; 100_000]);
        let raw = vec![Bytes::from_static(b"abc"), big.clone(), Bytes::new()];
        let whole = response(raw.clone());
        let mut head = whole.clone();
        head.raw_output_contents.clear();
        // tonic may yield the message in more than one chunk.
        let framed = framed(&head);
        let (a, b) = framed.split_at(7);
        let chunks = vec![Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
        let (data, trailers) = send(chunks, trailers("0"), RawTail(raw)).await;
        assert_eq!(decode(&data), whole);
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        // The big tensor is sent as it was, not copied.
        assert!(
            data.iter()
                .any(|d| d.as_ptr() == big.as_ptr() && d.len() == big.len()),
            "the tensor's own bytes are one of the pieces"
        );
    }

    #[tokio::test]
    async fn a_failed_call_is_sent_as_tonic_made_it() {
        let (data, trailers) = send(
            Vec::new(),
            trailers("13"),
            RawTail(vec![Bytes::from_static(b"x")]),
        )
        .await;
        assert!(data.iter().all(Bytes::is_empty));
        assert_eq!(trailers.unwrap()["grpc-status"], "13");
    }

    #[tokio::test]
    async fn a_compressed_message_is_an_internal_error_not_a_corrupt_one() {
        let mut chunk = BytesMut::new();
        chunk.put_u8(1);
        chunk.put_u32(3);
        chunk.put_slice(b"xyz");
        let (data, trailers) = send(
            vec![chunk.freeze()],
            trailers("0"),
            RawTail(vec![Bytes::from_static(b"x")]),
        )
        .await;
        assert!(data.is_empty());
        assert_eq!(trailers.unwrap()["grpc-status"], "13");
    }

    #[test]
    fn only_responses_without_gzip_are_appended_to() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert!(appendable(&m));
        m.insert("grpc-accept-encoding", "identity, deflate".parse().unwrap());
        assert!(appendable(&m));
        m.insert(
            "grpc-accept-encoding",
            "identity,deflate, gzip".parse().unwrap(),
        );
        assert!(!appendable(&m));
    }
}
