//! OpenAI's embeddings API: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{model}`,
//! with OpenAI's request, response and error shapes, so the `openai` client works with
//! `base_url` pointed here.

use std::time::UNIX_EPOCH;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::body_failure;
use super::{Failure, Input, Kind, Origin, Truncation};
use crate::api::http::json_response;
use crate::budget::Reservation;
use crate::models::ServedModel;
use crate::state::AppState;
use crate::telemetry::Protocol;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Input,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<i64>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Serialize)]
struct EmbeddingsResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

/// A vector as OpenAI sends it: numbers, or base64 of little-endian `f32`s.
#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

/// A failure in OpenAI's error shape.
fn error_response(failure: &Failure, id: Option<&str>) -> Response {
    let detail = ErrorDetail {
        message: &failure.message,
        kind: match failure.kind {
            Kind::Overloaded | Kind::Internal => "server_error",
            _ => "invalid_request_error",
        },
        param: failure.param,
        code: match failure.kind {
            Kind::NotFound => Some("model_not_found"),
            Kind::Forbidden => Some("permission_denied"),
            _ => None,
        },
    };
    let body = serde_json::to_vec(&ErrorBody { error: detail }).unwrap_or_default();
    super::with_request_id(json_response(super::status(failure.kind, false), body), id)
}

/// `POST /v1/embeddings`.
pub(super) async fn embeddings(
    State(state): State<AppState>,
    caller: crate::listen::Caller,
    who: super::Who,
    Extension(held): Extension<Reservation>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = match body
        .map_err(|r| body_failure(&state, r))
        .and_then(|b| super::parse::<EmbeddingsRequest>(&b))
    {
        Ok(request) => request,
        Err(failure) => return error_response(&failure, None),
    };
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            let failure = Failure::new(
                Kind::Invalid,
                format!("encoding_format must be 'float' or 'base64', not '{other}'"),
            )
            .param("encoding_format");
            return error_response(&failure, None);
        }
    };
    let (model, spec) = match super::find(&state, &request.model, &who) {
        Ok(found) => found,
        Err(failure) => return error_response(&failure, None),
    };
    let dimensions = match request.dimensions {
        None => None,
        Some(d) if d == spec.dimensions as i64 => None,
        Some(d) if spec.matryoshka && d >= 1 && (d as usize) < spec.dimensions => Some(d as usize),
        Some(d) => {
            let failure = Failure::new(
                Kind::Invalid,
                if spec.matryoshka {
                    format!(
                        "dimensions must be between 1 and {} for model '{}', not {d}",
                        spec.dimensions, model.name
                    )
                } else {
                    format!(
                        "model '{}' makes {}-dimensional vectors and was not trained to be cut \
                         shorter (matryoshka = false in [models.embeddings]); dimensions {d} is \
                         not available",
                        model.name, spec.dimensions
                    )
                },
            )
            .param("dimensions");
            return error_response(&failure, None);
        }
    };
    let texts = match request.input.texts("input") {
        Ok(texts) => texts,
        Err(failure) => return error_response(&failure, None),
    };
    let origin = Origin {
        protocol: Protocol::OpenAi,
        caller,
        headers: &headers,
        user: request.user.as_deref(),
        held: held.clone(),
    };
    let (id, outcome) = super::embed(&state, &model, &spec, texts, Truncation::Model, origin).await;
    let mut embedded = match outcome {
        Ok(embedded) => embedded,
        Err(failure) => return error_response(&failure, Some(&id)),
    };
    let values = embedded.vectors.iter().map(Vec::len).sum::<usize>();
    if let Some(d) = dimensions {
        for v in &mut embedded.vectors {
            v.truncate(d);
            super::normalize(v);
        }
    }
    let tokens = embedded.tokens.iter().sum();
    let name = model.name.clone();
    let encode = move || {
        let data = embedded
            .vectors
            .into_iter()
            .enumerate()
            .map(|(index, v)| EmbeddingItem {
                object: "embedding",
                index,
                embedding: if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    Vector::Floats(v)
                },
            })
            .collect();
        serde_json::to_vec(&EmbeddingsResponse {
            object: "list",
            data,
            model: &name,
            usage: Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        })
        .map_err(|e| e.to_string())
    };
    match super::off_the_io_threads(values, encode).await {
        Ok(body) => {
            held.add(body.len());
            super::with_request_id(json_response(StatusCode::OK, body), Some(&id))
        }
        Err(e) => error_response(&Failure::new(Kind::Internal, e), Some(&id)),
    }
}

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

fn model_object(m: &ServedModel) -> ModelObject<'_> {
    ModelObject {
        id: &m.name,
        object: "model",
        created: m
            .loaded_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        owned_by: "oxinfer",
    }
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

/// `GET /v1/models`: the embedding models served (the highest version of each name).
pub(super) async fn models(State(state): State<AppState>, who: super::Who) -> Response {
    let models = super::embedding_models(&state, &who);
    let list = ModelList {
        object: "list",
        data: models.iter().map(|m| model_object(m)).collect(),
    };
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&list).unwrap_or_default(),
    )
}

/// `GET /v1/models/{model}`.
pub(super) async fn model(
    State(state): State<AppState>,
    who: super::Who,
    Path(name): Path<String>,
) -> Response {
    match super::find(&state, &name, &who) {
        Ok((model, _)) => json_response(
            StatusCode::OK,
            serde_json::to_vec(&model_object(&model)).unwrap_or_default(),
        ),
        Err(failure) => error_response(&failure, None),
    }
}
