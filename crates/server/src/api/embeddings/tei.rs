//! Hugging Face text-embeddings-inference's API: `POST /embed`, `POST /tokenize`, `GET /info`,
//! with TEI's request, response and error shapes (`{"error", "error_type"}`).
//!
//! TEI serves one model per process; here several embedding models may be served, so a request
//! names one with a `model` field or an `X-Model` header. With one embedding model served, it
//! is that one.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{Failure, Input, Kind, Origin, Truncation, body_failure};
use crate::api::http::json_response;
use crate::budget::Reservation;
use crate::models::ServedModel;
use crate::models::served::EmbeddingSpec;
use crate::state::AppState;
use crate::telemetry::Protocol;

/// The header naming the model, when several embedding models are served.
const MODEL_HEADER: &str = "x-model";

#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Input,
    #[serde(default)]
    normalize: Option<bool>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<String>,
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct TokenizeRequest {
    inputs: Input,
    #[serde(default)]
    add_special_tokens: Option<bool>,
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_type: &'static str,
}

/// A failure in TEI's error shape and statuses.
fn error_response(failure: &Failure, id: Option<&str>) -> Response {
    let body = ErrorBody {
        error: &failure.message,
        error_type: match failure.kind {
            Kind::Empty => "empty",
            Kind::Overloaded => "overloaded",
            Kind::Internal => "backend",
            Kind::Invalid | Kind::TooMany | Kind::TooLong | Kind::NotFound | Kind::Forbidden => {
                "validation"
            }
        },
    };
    let response = json_response(
        super::status(failure.kind, true),
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    super::with_request_id(response, id)
}

/// The model a request names (field, else header), or the only embedding model served.
fn choose(
    state: &AppState,
    field: Option<&str>,
    headers: &HeaderMap,
    who: &super::Who,
) -> Result<(Arc<ServedModel>, EmbeddingSpec), Failure> {
    let named = field.map(str::to_string).or_else(|| {
        headers
            .get(MODEL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    if let Some(name) = named {
        return super::find(state, &name, who);
    }
    let models = super::embedding_models(state, who);
    match models.as_slice() {
        [one] => super::find(state, &one.name, who),
        [] => Err(Failure::new(Kind::NotFound, "no embedding model is served")),
        several => Err(Failure::new(
            Kind::Invalid,
            format!(
                "{} embedding models are served ({}): name one with a `model` field or an \
                 `X-Model` header",
                several.len(),
                super::names(several)
            ),
        )
        .param("model")),
    }
}

fn no_prompts(model: &ServedModel, prompt_name: Option<&str>) -> Result<(), Failure> {
    match prompt_name {
        None => Ok(()),
        Some(name) => Err(Failure::new(
            Kind::Invalid,
            format!(
                "model '{}' has no prompts, so prompt_name '{name}' cannot be applied",
                model.name
            ),
        )),
    }
}

fn read<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Failure> {
    body.map_err(|r| body_failure(state, r))
        .and_then(|b| super::parse::<T>(&b))
}

/// `POST /embed`: one vector per input, as a JSON array of arrays.
pub(super) async fn embed(
    State(state): State<AppState>,
    caller: crate::listen::Caller,
    who: super::Who,
    Extension(held): Extension<Reservation>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let prepared = read::<EmbedRequest>(&state, body).and_then(|request| {
        let (model, spec) = choose(&state, request.model.as_deref(), &headers, &who)?;
        no_prompts(&model, request.prompt_name.as_deref())?;
        let normalize = request.normalize.unwrap_or(true);
        if !normalize && spec.normalized {
            return Err(Failure::new(
                Kind::Invalid,
                format!(
                    "model '{}' normalizes its vectors itself; normalize = false is not \
                     available for it",
                    model.name
                ),
            ));
        }
        let truncation = match (
            request.truncate.unwrap_or(false),
            request.truncation_direction.as_deref(),
        ) {
            (false, _) => Truncation::Refuse,
            (true, None) => Truncation::Right,
            (true, Some(d)) if d.eq_ignore_ascii_case("right") => Truncation::Right,
            (true, Some(d)) if d.eq_ignore_ascii_case("left") => Truncation::Left,
            (true, Some(d)) => {
                return Err(Failure::new(
                    Kind::Invalid,
                    format!("truncation_direction must be 'Right' or 'Left', not '{d}'"),
                ));
            }
        };
        let texts = request.inputs.texts("inputs")?;
        Ok((model, spec, texts, truncation, normalize))
    });
    let (model, spec, texts, truncation, normalize) = match prepared {
        Ok(p) => p,
        Err(failure) => return error_response(&failure, None),
    };
    let origin = Origin {
        protocol: Protocol::Tei,
        caller,
        headers: &headers,
        user: None,
        held: held.clone(),
    };
    let (id, outcome) = super::embed(&state, &model, &spec, texts, truncation, origin).await;
    match outcome {
        Ok(mut embedded) => {
            if normalize && !spec.normalized {
                embedded
                    .vectors
                    .iter_mut()
                    .for_each(|v| super::normalize(v));
            }
            let values = embedded.vectors.iter().map(Vec::len).sum::<usize>();
            let vectors = embedded.vectors;
            let encode = move || serde_json::to_vec(&vectors).map_err(|e| e.to_string());
            match super::off_the_io_threads(values, encode).await {
                Ok(body) => {
                    held.add(body.len());
                    super::with_request_id(json_response(StatusCode::OK, body), Some(&id))
                }
                Err(e) => error_response(&Failure::new(Kind::Internal, e), Some(&id)),
            }
        }
        Err(failure) => error_response(&failure, Some(&id)),
    }
}

#[derive(Serialize)]
struct SimpleToken {
    id: u32,
    text: String,
    special: bool,
    start: Option<usize>,
    stop: Option<usize>,
}

/// `POST /tokenize`: each input's tokens as the model reads them.
pub(super) async fn tokenize(
    State(state): State<AppState>,
    who: super::Who,
    Extension(held): Extension<Reservation>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let checked = read::<TokenizeRequest>(&state, body).and_then(|request| {
        let (model, spec) = choose(&state, request.model.as_deref(), &headers, &who)?;
        no_prompts(&model, request.prompt_name.as_deref())?;
        let texts = request.inputs.texts("inputs")?;
        if texts.len() > spec.max_client_batch_size {
            return Err(Failure::new(
                Kind::TooMany,
                format!(
                    "batch size {} > maximum allowed batch size {}",
                    texts.len(),
                    spec.max_client_batch_size
                ),
            ));
        }
        // The worst case of tokenizing, as for /embed.
        let text_bytes = texts.iter().map(String::len).sum::<usize>();
        held.grow(text_bytes.saturating_mul(super::TOKENIZING_BYTES_PER_TEXT_BYTE))?;
        let special = request.add_special_tokens.unwrap_or(true);
        Ok((model, spec, texts, special, text_bytes))
    });
    let (model, spec, texts, special, text_bytes) = match checked {
        Ok(checked) => checked,
        Err(failure) => return error_response(&failure, None),
    };
    let work = move || -> Result<Vec<u8>, Failure> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokens = model
            .model
            .tokenize(&refs)
            .or_else(|| spec.tokenize(&refs))
            .ok_or_else(|| {
                Failure::new(
                    Kind::Invalid,
                    format!(
                        "model '{}' has no tokenizer the server can call",
                        model.name
                    ),
                )
            })?
            .map_err(|e| Failure::new(Kind::Invalid, e.to_string()))?;
        let rows: Vec<Vec<SimpleToken>> = tokens
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .filter(|t| special || !t.special)
                    .map(|t| SimpleToken {
                        id: t.id,
                        text: t.text,
                        special: t.special,
                        start: t.span.map(|s| s.0),
                        stop: t.span.map(|s| s.1),
                    })
                    .collect()
            })
            .collect();
        serde_json::to_vec(&rows).map_err(|e| Failure::new(Kind::Internal, e.to_string()))
    };
    // Many or long texts are tokenized on a blocking thread.
    let result = if text_bytes > super::OFFLOAD_TEXT_BYTES {
        tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
            Err(Failure::new(
                Kind::Internal,
                format!("tokenizing panicked: {e}"),
            ))
        })
    } else {
        work()
    };
    match result {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(failure) => error_response(&failure, None),
    }
}

#[derive(Deserialize)]
pub(super) struct InfoQuery {
    model: Option<String>,
}

#[derive(Serialize)]
struct Info<'a> {
    model_id: &'a str,
    model_sha: &'a str,
    model_dtype: &'static str,
    model_type: ModelType<'a>,
    max_concurrent_requests: usize,
    max_input_length: Option<usize>,
    max_batch_tokens: Option<usize>,
    max_batch_requests: Option<usize>,
    max_client_batch_size: usize,
    auto_truncate: bool,
    tokenization_workers: usize,
    version: &'static str,
}

#[derive(Serialize)]
struct ModelType<'a> {
    embedding: Pooling<'a>,
}

#[derive(Serialize)]
struct Pooling<'a> {
    pooling: &'a str,
}

/// `GET /info` (`?model=` or `X-Model` to pick one of several embedding models).
pub(super) async fn info(
    State(state): State<AppState>,
    who: super::Who,
    Query(query): Query<InfoQuery>,
    headers: HeaderMap,
) -> Response {
    let (model, spec) = match choose(&state, query.model.as_deref(), &headers, &who) {
        Ok(found) => found,
        Err(failure) => return error_response(&failure, None),
    };
    let scheduler = &model.entry.scheduler;
    let info = Info {
        model_id: &model.name,
        model_sha: &model.sha256,
        model_dtype: "float32",
        model_type: ModelType {
            embedding: Pooling {
                pooling: spec.pooling.as_deref().unwrap_or("unknown"),
            },
        },
        max_concurrent_requests: scheduler.max_queue_size,
        max_input_length: spec.max_input_tokens,
        max_batch_tokens: spec.max_batch_tokens,
        max_batch_requests: (scheduler.max_batch_size > 0).then_some(scheduler.max_batch_size),
        max_client_batch_size: spec.max_client_batch_size,
        auto_truncate: spec.truncates,
        tokenization_workers: 1,
        version: env!("CARGO_PKG_VERSION"),
    };
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&info).unwrap_or_default(),
    )
}
