//! The embedding APIs their users already call, next to OIP and from the same loaded models:
//! OpenAI's `/v1/embeddings` and `/v1/models` ([`openai`]), and text-embeddings-inference's
//! `/embed`, `/tokenize` and `/info` ([`tei`]).
//!
//! A model serves them when it is a text-embedding model: the runtime says so
//! ([`Model::embedder`](oxinfer_core::Model::embedder): candle's text models) or the manifest's
//! `[models.embeddings]` names its text input and embedding output. A request becomes an
//! ordinary [`InferRequest`] (the texts as one `BYTES` tensor) and goes through
//! [`pipeline::handle`]: the same scheduler and dynamic batching as OIP requests (requests from
//! every API batch together), the same statistics, metrics (`protocol="openai"` / `"tei"`),
//! request ids, in-flight budget and inference log records.

mod openai;
mod tei;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::routing::{get, post};
use oxinfer_core::protocol::{InferRequest, RequestedOutput};
use oxinfer_core::{Error, ErrorCode, Tensor};
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};

use crate::api::http::X_REQUEST_ID;
use crate::auth::Grant;
use crate::budget::Reservation;
use crate::models::ServedModel;
use crate::models::served::EmbeddingSpec;
use crate::pipeline;
use crate::state::AppState;
use crate::telemetry::Protocol;

/// The embedding routes, each request's bytes held against the in-flight budget as for OIP.
pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let budget = || middleware::from_fn_with_state(state.clone(), crate::api::http::hold_budget);
    Router::new()
        .route("/v1/embeddings", post(openai::embeddings).layer(budget()))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{model}", get(openai::model))
        .route("/embed", post(tei::embed).layer(budget()))
        .route("/tokenize", post(tei::tokenize).layer(budget()))
        .route("/info", get(tei::info))
}

/// Why an embeddings request failed, before each API puts it in its own error shape.
#[derive(Debug)]
pub(super) struct Failure {
    kind: Kind,
    message: String,
    /// The request field at fault (OpenAI's `param`).
    param: Option<&'static str>,
}

/// The classes of failure the two APIs distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A malformed request or a value the model cannot take.
    Invalid,
    /// No input at all, or an empty string.
    Empty,
    /// More inputs than the model's `max_client_batch_size`, or a body over the limit.
    TooMany,
    /// An input longer than the model takes, with truncation off.
    TooLong,
    /// No such model, or it is not an embedding model.
    NotFound,
    /// The caller's token may not use the model (`[auth]`).
    Forbidden,
    /// The server is at capacity (queue full, in-flight budget spent, deadline passed).
    Overloaded,
    /// The model or the server failed.
    Internal,
}

impl Failure {
    pub(super) fn new(kind: Kind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            param: None,
        }
    }

    pub(super) fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let kind = match e.code() {
            ErrorCode::InvalidArgument => Kind::Invalid,
            ErrorCode::NotFound => Kind::NotFound,
            ErrorCode::ResourceExhausted => Kind::TooMany,
            ErrorCode::Unavailable | ErrorCode::OverBudget | ErrorCode::DeadlineExceeded => {
                Kind::Overloaded
            }
            ErrorCode::Internal => {
                tracing::warn!("embeddings request failed: {e}");
                Kind::Internal
            }
        };
        Failure::new(kind, e.to_string())
    }
}

/// The texts of a request: a string, or an array of strings. Arrays of token ids are read (so
/// that the error can say what they are) but not served: every embedding model here takes text.
#[derive(Debug)]
pub(super) enum Input {
    Texts(Vec<String>),
    TokenIds,
    /// More than [`MAX_INPUTS_READ`] inputs (the rest was skipped, not read into memory).
    TooMany,
}

/// The most inputs a request body is read for, whatever the model's own limit (checked after).
const MAX_INPUTS_READ: usize = 65536;

impl<'de> serde::Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(InputVisitor)
    }
}

struct InputVisitor;

impl<'de> Visitor<'de> for InputVisitor {
    type Value = Input;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string or an array of strings")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Input, E> {
        Ok(Input::Texts(vec![v.to_string()]))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Input, E> {
        Ok(Input::Texts(vec![v]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Input, A::Error> {
        let mut texts = Vec::new();
        while let Some(item) = seq.next_element::<Item>()? {
            match item {
                Item::Text(t) if texts.len() < MAX_INPUTS_READ => texts.push(t),
                Item::Text(_) => {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Input::TooMany);
                }
                Item::Tokens => {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Input::TokenIds);
                }
            }
        }
        Ok(Input::Texts(texts))
    }
}

/// One element of an input array: a string, or a token id / array of token ids.
enum Item {
    Text(String),
    Tokens,
}

impl<'de> serde::Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                Ok(Item::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Item, E> {
                Ok(Item::Text(v))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Item, E> {
                Ok(Item::Tokens)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Item, E> {
                Ok(Item::Tokens)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Item::Tokens)
            }
        }
        d.deserialize_any(ItemVisitor)
    }
}

impl Input {
    /// The texts, or why there are none to embed.
    pub(super) fn texts(self, param: &'static str) -> Result<Vec<String>, Failure> {
        match self {
            Input::TokenIds => Err(Failure::new(
                Kind::Invalid,
                "token ids are not accepted: the embedding models here take text; send strings",
            )
            .param(param)),
            Input::TooMany => Err(Failure::new(
                Kind::TooMany,
                format!("more than {MAX_INPUTS_READ} inputs in one request"),
            )
            .param(param)),
            Input::Texts(t) if t.is_empty() => {
                Err(Failure::new(Kind::Empty, format!("`{param}` cannot be empty")).param(param))
            }
            Input::Texts(t) => match t.iter().position(String::is_empty) {
                Some(i) => Err(Failure::new(
                    Kind::Empty,
                    format!("`{param}` [{i}] is an empty string; every input needs text"),
                )
                .param(param)),
                None => Ok(t),
            },
        }
    }
}

/// Who asks (the token's grant under `[auth]`, and the client): the embedding routes name
/// their model in the body, so they check it against the token here.
#[derive(Debug, Clone, Default)]
pub(super) struct Who {
    grant: Option<Grant>,
    client: Option<std::net::SocketAddr>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Who, Self::Rejection> {
        Ok(Who {
            grant: parts.extensions.get::<Grant>().cloned(),
            client: crate::listen::Caller::of(&parts.extensions).addr,
        })
    }
}

impl Who {
    fn may_use(&self, model: &str) -> bool {
        self.grant.as_ref().is_none_or(|g| g.may_use(model))
    }
}

/// An embedding model by name (`name` or `name:version`) that `who` may use, or why there is
/// none (a model the token may not use is refused before it is looked up).
pub(super) fn find(
    state: &AppState,
    requested: &str,
    who: &Who,
) -> Result<(Arc<ServedModel>, EmbeddingSpec), Failure> {
    let (name, version) = match requested.rsplit_once(':') {
        Some((name, version))
            if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (name, Some(version))
        }
        _ => (requested, None),
    };
    state
        .access
        .check_model(who.grant.as_ref(), name, who.client, &"embeddings")
        .map_err(|denied| Failure::new(Kind::Forbidden, denied.message()).param("model"))?;
    let model = state
        .repository
        .get(name, version)
        .map_err(|e| Failure::from(e).param("model"))?;
    match model.embedding.clone() {
        Some(spec) => Ok((model, spec)),
        None => Err(Failure::new(
            Kind::NotFound,
            format!(
                "model '{}' is not an embedding model (embedding models: {})",
                model.name,
                names(&embedding_models(state, who))
            ),
        )
        .param("model")),
    }
}

/// The ready embedding models `who` may use, highest version of each name.
pub(super) fn embedding_models(state: &AppState, who: &Who) -> Vec<Arc<ServedModel>> {
    let mut models: Vec<Arc<ServedModel>> = state
        .repository
        .ready_models()
        .into_iter()
        .filter(|m| m.embedding.is_some() && who.may_use(&m.name))
        .collect();
    models.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then(b.entry.version_number().cmp(&a.entry.version_number()))
    });
    models.dedup_by(|a, b| a.name == b.name);
    models
}

fn names(models: &[Arc<ServedModel>]) -> String {
    if models.is_empty() {
        return "none".into();
    }
    models
        .iter()
        .map(|m| format!("'{}'", m.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a request came from, for the pipeline.
pub(super) struct Origin<'a> {
    pub(super) protocol: Protocol,
    pub(super) caller: crate::listen::Caller,
    pub(super) headers: &'a HeaderMap,
    pub(super) user: Option<&'a str>,
    pub(super) held: Reservation,
}

/// How to treat inputs longer than the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Truncation {
    /// As the model does: cut if it truncates, else refuse.
    Model,
    /// Refuse them.
    Refuse,
    /// Keep the first tokens.
    Right,
    /// Keep the last tokens.
    Left,
}

/// Vectors for a batch of texts.
#[derive(Debug)]
pub(super) struct Embedded {
    /// One vector per text, `dimensions` each, in order.
    pub(super) vectors: Vec<Vec<f32>>,
    /// Tokens per text as the model reads them (special tokens included, after truncation);
    /// words when the model has no tokenizer the server can call.
    pub(super) tokens: Vec<usize>,
}

/// Embeds `texts` with `model` through the pipeline. Returns the request id with the outcome.
pub(super) async fn embed(
    state: &AppState,
    model: &Arc<ServedModel>,
    spec: &EmbeddingSpec,
    texts: Vec<String>,
    truncation: Truncation,
    origin: Origin<'_>,
) -> (String, Result<Embedded, Failure>) {
    let header_id = origin
        .headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    // Tokenizing many or long texts runs on a blocking thread, like big OIP bodies.
    let text_bytes: usize = texts.iter().map(String::len).sum();
    let (texts, prepared) = if text_bytes > OFFLOAD_TEXT_BYTES {
        let (model, spec, held) = (model.clone(), spec.clone(), origin.held.clone());
        tokio::task::spawn_blocking(move || prepare(&model, &spec, texts, truncation, &held))
            .await
            .unwrap_or_else(|e| {
                let failure = Failure::new(Kind::Internal, format!("tokenizing panicked: {e}"));
                (Vec::new(), Err(failure))
            })
    } else {
        prepare(model, spec, texts, truncation, &origin.held)
    };
    // A request refused here is still recorded, with its reason, like any failed request.
    let (decoded, tokens) = match prepared {
        Ok(tokens) => {
            let n = texts.len();
            let request =
                Tensor::from_strings(spec.input.clone(), vec![n], texts).map(|t| InferRequest {
                    inputs: vec![t],
                    outputs: vec![RequestedOutput {
                        name: spec.output.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            (request, Ok(tokens))
        }
        Err(failure) => (Err(Error::invalid(failure.message.clone())), Err(failure)),
    };
    let call = pipeline::Call {
        model: &model.name,
        version: Some(&model.version),
        protocol: origin.protocol,
        caller: origin.caller,
        fallback_id: header_id,
        target: Ok(model.clone()),
        encodable: None,
        held: Some(origin.held.clone()),
        user: origin.user,
    };
    let (id, result) = pipeline::handle(state, call, decoded).await;
    let outcome = match (tokens, result) {
        (Err(failure), _) => Err(failure),
        (Ok(_), Err(e)) => Err(Failure::from(e)),
        (Ok(tokens), Ok(response)) => vectors(&response.outputs[0], spec.dimensions)
            .map(|vectors| Embedded { vectors, tokens })
            .map_err(Failure::from),
    };
    (id, outcome)
}

/// Texts longer than this in all are tokenized on a blocking thread.
pub(super) const OFFLOAD_TEXT_BYTES: usize = 64 * 1024;

/// What tokenizing may hold per byte of text, at most: one token per byte, each with its id,
/// offsets, masks and text in the tokenizer's encoding and in the server's copy.
pub(super) const TOKENIZING_BYTES_PER_TEXT_BYTE: usize = 160;

/// Checks the batch against the model's limits, counts (and where asked, truncates) tokens,
/// and reserves the texts' memory. Returns the texts (truncated where asked) and the tokens
/// per text.
fn prepare(
    model: &ServedModel,
    spec: &EmbeddingSpec,
    mut texts: Vec<String>,
    truncation: Truncation,
    held: &Reservation,
) -> (Vec<String>, Result<Vec<usize>, Failure>) {
    let counted = count_tokens(model, spec, &mut texts, truncation, held);
    (texts, counted)
}

fn count_tokens(
    model: &ServedModel,
    spec: &EmbeddingSpec,
    texts: &mut [String],
    truncation: Truncation,
    held: &Reservation,
) -> Result<Vec<usize>, Failure> {
    if texts.len() > spec.max_client_batch_size {
        return Err(Failure::new(
            Kind::TooMany,
            format!(
                "batch size {} > maximum allowed batch size {} (max_client_batch_size in \
                 [models.embeddings])",
                texts.len(),
                spec.max_client_batch_size
            ),
        )
        .param("input"));
    }
    let text_bytes: usize = texts.iter().map(String::len).sum();
    held.grow(text_bytes + texts.len() * std::mem::size_of::<bytes::Bytes>())?;
    // The worst case of tokenizing is reserved while it runs, so that a body of one-letter
    // words cannot make the tokenizer hold gigabytes.
    let tokenizing = held.grow(text_bytes.saturating_mul(TOKENIZING_BYTES_PER_TEXT_BYTE));
    tokenizing?;
    let release = || held.release(text_bytes.saturating_mul(TOKENIZING_BYTES_PER_TEXT_BYTE));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let Some(tokenized) = model.model.tokenize(&refs).or_else(|| spec.tokenize(&refs)) else {
        release();
        return Ok(texts.iter().map(|t| t.split_whitespace().count()).collect());
    };
    let tokenized = tokenized.map_err(|e| {
        release();
        Failure::new(Kind::Invalid, e.to_string())
    })?;
    let counted = limit_tokens(spec, texts, &tokenized, truncation);
    drop(tokenized);
    release();
    counted
}

/// Token counts after the model's limit: over-long texts cut or refused per `truncation`.
fn limit_tokens(
    spec: &EmbeddingSpec,
    texts: &mut [String],
    tokenized: &[Vec<oxinfer_core::Token>],
    truncation: Truncation,
) -> Result<Vec<usize>, Failure> {
    let Some(max) = spec.max_input_tokens else {
        return Ok(tokenized.iter().map(Vec::len).collect());
    };
    let mut counts = Vec::with_capacity(texts.len());
    for (i, (text, tokens)) in texts.iter_mut().zip(tokenized).enumerate() {
        if tokens.len() <= max {
            counts.push(tokens.len());
            continue;
        }
        let cut = match truncation {
            Truncation::Model if spec.truncates => {
                counts.push(max);
                continue;
            }
            Truncation::Model | Truncation::Refuse => {
                return Err(Failure::new(
                    Kind::TooLong,
                    format!(
                        "input [{i}] is {} tokens long; this model takes at most {max} \
                         (special tokens included)",
                        tokens.len()
                    ),
                )
                .param("input"));
            }
            Truncation::Right | Truncation::Left => truncation,
        };
        *text = truncated(text, tokens, max, cut == Truncation::Left);
        counts.push(max);
    }
    Ok(counts)
}

/// `text` cut to the words of its tokens that fit in `max` tokens with the special ones, from
/// the start (`left`: from the end).
fn truncated(text: &str, tokens: &[oxinfer_core::Token], max: usize, left: bool) -> String {
    let special = tokens.iter().filter(|t| t.special).count();
    let keep = max.saturating_sub(special);
    let spans: Vec<(usize, usize)> = tokens.iter().filter_map(|t| t.span).collect();
    if keep == 0 || spans.is_empty() {
        return String::new();
    }
    let range = if left {
        spans[spans.len().saturating_sub(keep)].0..text.len()
    } else {
        0..spans[keep.min(spans.len()) - 1].1
    };
    // Offsets come from the tokenizer; one that is not a character boundary keeps nothing
    // rather than everything.
    text.get(range).unwrap_or_default().to_string()
}

/// The rows of an FP32 `[n, dimensions]` output.
fn vectors(t: &Tensor, dimensions: usize) -> oxinfer_core::Result<Vec<Vec<f32>>> {
    // A view when the buffer is aligned for f32 (it is, from the runtimes), else a copy.
    let values = match t.as_slice::<f32>() {
        Ok(values) => std::borrow::Cow::Borrowed(values),
        Err(_) => std::borrow::Cow::Owned(t.to_vec::<f32>()?),
    };
    if dimensions == 0 || values.len() % dimensions != 0 {
        return Err(Error::Internal(format!(
            "output '{}' is not FP32 rows of {dimensions}",
            t.name()
        )));
    }
    Ok(values
        .chunks_exact(dimensions)
        .map(<[f32]>::to_vec)
        .collect())
}

/// `response` with the request's id in `X-Request-ID`, when there is one.
pub(super) fn with_request_id(
    mut response: axum::response::Response,
    id: Option<&str>,
) -> axum::response::Response {
    if let Some(value) = id.and_then(|id| axum::http::HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}

/// Vectors with more values than this are encoded on a blocking thread (as OIP does with
/// responses over 256 KiB), so that big batches do not hold up the I/O threads.
const OFFLOAD_VALUES: usize = 65536;

/// Runs `encode` on a blocking thread when the response holds more than [`OFFLOAD_VALUES`]
/// values, else here.
pub(super) async fn off_the_io_threads(
    values: usize,
    encode: impl FnOnce() -> Result<Vec<u8>, String> + Send + 'static,
) -> Result<Vec<u8>, String> {
    if values <= OFFLOAD_VALUES {
        return encode();
    }
    tokio::task::spawn_blocking(encode)
        .await
        .unwrap_or_else(|e| Err(format!("encoding panicked: {e}")))
}

/// Scales `v` to unit L2 norm (left alone if it is all zeros).
pub(super) fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

/// The status of a failure's kind, by API: OpenAI's, or TEI's.
pub(super) fn status(kind: Kind, tei: bool) -> StatusCode {
    match (kind, tei) {
        (Kind::Invalid, false) => StatusCode::BAD_REQUEST,
        (Kind::Invalid, true) => StatusCode::UNPROCESSABLE_ENTITY,
        (Kind::Empty, _) => StatusCode::BAD_REQUEST,
        (Kind::TooMany | Kind::TooLong, _) => StatusCode::PAYLOAD_TOO_LARGE,
        (Kind::NotFound, _) => StatusCode::NOT_FOUND,
        (Kind::Forbidden, _) => StatusCode::FORBIDDEN,
        (Kind::Overloaded, false) => StatusCode::SERVICE_UNAVAILABLE,
        (Kind::Overloaded, true) => StatusCode::TOO_MANY_REQUESTS,
        (Kind::Internal, false) => StatusCode::INTERNAL_SERVER_ERROR,
        (Kind::Internal, true) => StatusCode::FAILED_DEPENDENCY,
    }
}

/// Why a request body could not be read: over the body limit, over the in-flight budget, or
/// broken off.
pub(super) fn body_failure(state: &AppState, rejection: BytesRejection) -> Failure {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Failure::new(
            Kind::TooMany,
            format!(
                "request body is larger than the limit of {} bytes (server setting \
                 max_request_bytes)",
                state.max_request_bytes
            ),
        )
    } else if let Some(refused) = crate::budget::refusal_in(&rejection) {
        refused.into()
    } else {
        Failure::new(
            Kind::Invalid,
            format!("cannot read request body: {rejection}"),
        )
    }
}

/// A JSON body, or why it is not one the route reads: the same check as OIP's (a body that is
/// not JSON), with the reader's message.
pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure::new(Kind::Invalid, format!("invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_strings_and_token_ids_are_recognised() {
        let texts = |json: &str| serde_json::from_str::<Input>(json).unwrap();
        assert!(matches!(texts(r#""a""#), Input::Texts(t) if t == ["a"]));
        assert!(matches!(texts(r#"["a","b"]"#), Input::Texts(t) if t == ["a", "b"]));
        assert!(matches!(texts("[1,2,3]"), Input::TokenIds));
        assert!(matches!(texts("[[1,2],[3]]"), Input::TokenIds));
        assert!(serde_json::from_str::<Input>("{}").is_err());
        assert!(serde_json::from_str::<Input>(r#"["a", 1.5]"#).is_err());
        let many = format!("[{}]", vec!["\"a\""; MAX_INPUTS_READ + 1].join(","));
        let e = texts(&many).texts("input").unwrap_err();
        assert_eq!(e.kind, Kind::TooMany);
        let e = texts("[]").texts("input").unwrap_err();
        assert_eq!(e.kind, Kind::Empty);
        let e = texts(r#"["a", ""]"#).texts("input").unwrap_err();
        assert!(
            e.message.contains("[1] is an empty string"),
            "{}",
            e.message
        );
    }

    #[test]
    fn truncation_keeps_whole_tokens_from_either_end() {
        let token = |text: &str, span: Option<(usize, usize)>| oxinfer_core::Token {
            id: 0,
            text: text.into(),
            special: span.is_none(),
            span,
        };
        let text = "one two three";
        let tokens = [
            token("[CLS]", None),
            token("one", Some((0, 3))),
            token("two", Some((4, 7))),
            token("three", Some((8, 13))),
            token("[SEP]", None),
        ];
        assert_eq!(truncated(text, &tokens, 4, false), "one two");
        assert_eq!(truncated(text, &tokens, 4, true), "two three");
        assert_eq!(truncated(text, &tokens, 2, false), "");
    }

    #[test]
    fn normalizing_gives_unit_vectors() {
        let mut v = [3.0f32, 4.0];
        normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut zero = [0.0f32; 3];
        normalize(&mut zero);
        assert_eq!(zero, [0.0; 3]);
    }
}
