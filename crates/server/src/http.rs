//! The OIP REST API (axum): routes, handlers and the mapping of errors to HTTP.
//!
//! Every endpoint exists with and without `/versions/{v}`; the unversioned form resolves to the
//! highest version served. Every error is `{"error": "..."}` with `Content-Type:
//! application/json` (no charset: the kserve client compares the header exactly).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use oxinfer_core::protocol::{
    ErrorBody, ModelReady, ServerLive, ServerMetadata, ServerReady, json,
};
use oxinfer_core::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;

use std::collections::BTreeMap;

use crate::audit::InferenceLog;
use crate::config::ModelConfig;
use crate::metrics::{ModelView, Protocol, ServerMetrics};
use crate::stats::InferenceStats;

use crate::pipeline;
use crate::repository::{ModelRepository, ServedModel};

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The served models.
    pub repository: Arc<ModelRepository>,
    /// Cleared when the server starts shutting down, so readiness probes fail first.
    pub ready: Arc<AtomicBool>,
    /// The largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// The inference log, when enabled.
    pub log: Option<InferenceLog>,
    /// Server-wide metrics.
    pub metrics: Arc<ServerMetrics>,
}

impl AppState {
    /// State for a repository, ready, with the given body limit.
    pub fn new(repository: ModelRepository, max_request_bytes: usize) -> Self {
        AppState {
            repository: Arc::new(repository),
            ready: Arc::new(AtomicBool::new(true)),
            max_request_bytes,
            log: None,
            metrics: Arc::default(),
        }
    }

    /// The same state, writing an inference log.
    pub fn with_log(mut self, log: InferenceLog) -> Self {
        self.log = Some(log);
        self
    }
}

/// An error on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn to_json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(status, body),
        Err(e) => ApiError(Error::Internal(e.to_string())).into_response(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code();
        if code == ErrorCode::Internal {
            tracing::warn!("request failed: {}", self.0);
        } else {
            tracing::debug!("request rejected: {}", self.0);
        }
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        to_json(
            status,
            &ErrorBody {
                error: self.0.to_string(),
            },
        )
    }
}

type ApiResult = Result<Response, ApiError>;

/// The binary tensor extension's header: the length of the JSON part of the body.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// The protocol extensions this server implements (`GET /v2`).
pub const EXTENSIONS: [&str; 4] = [
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
];

/// The REST router over `state`. Tested without a socket through `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    let limit = state.max_request_bytes;
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config_v),
        )
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats_v),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/metrics", get(metrics))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The limit applies to the decompressed body: a small gzip bomb cannot exceed it.
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestDecompressionLayer::new())
        .layer(CompressionLayer::new())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_declared_oversize,
        ))
        .with_state(state)
}

/// Answers 413 at once when the declared `Content-Length` is above the limit, before any of the
/// body is read (the body limit alone would read up to the limit first).
async fn refuse_declared_oversize(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > state.max_request_bytes as u64 => {
            too_large(state.max_request_bytes).into_response()
        }
        _ => next.run(request).await,
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError(Error::TooLarge(format!(
        "request body is larger than the limit of {limit} bytes (server setting max_request_bytes)"
    )))
}

async fn not_found(request: Request) -> Response {
    ApiError(Error::ModelNotFound(format!(
        "no such endpoint: {} {}",
        request.method(),
        request.uri().path()
    )))
    .into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    to_json(
        StatusCode::METHOD_NOT_ALLOWED,
        &ErrorBody {
            error: format!(
                "method {} is not allowed on {}",
                request.method(),
                request.uri().path()
            ),
        },
    )
}

async fn server_metadata() -> Response {
    to_json(
        StatusCode::OK,
        &ServerMetadata {
            name: "oxinfer".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        },
    )
}

async fn live() -> Response {
    to_json(StatusCode::OK, &ServerLive { live: true })
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        to_json(StatusCode::OK, &ServerReady { ready: true })
    } else {
        ApiError(Error::ModelNotReady("server is shutting down".into())).into_response()
    }
}

fn lookup(state: &AppState, model: &str, version: Option<&str>) -> Result<Arc<ServedModel>, Error> {
    state.repository.get(model, version)
}

async fn model_metadata(state: State<AppState>, Path(model): Path<String>) -> ApiResult {
    metadata(&state, &model, None)
}

async fn model_metadata_v(
    state: State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    metadata(&state, &model, Some(&version))
}

fn metadata(state: &AppState, model: &str, version: Option<&str>) -> ApiResult {
    let served = lookup(state, model, version)?;
    Ok(to_json(StatusCode::OK, &state.repository.metadata(&served)))
}

async fn model_ready(state: State<AppState>, Path(model): Path<String>) -> ApiResult {
    readiness(&state, &model, None)
}

async fn model_ready_v(
    state: State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    readiness(&state, &model, Some(&version))
}

fn readiness(state: &AppState, model: &str, version: Option<&str>) -> ApiResult {
    let served = lookup(state, model, version)?;
    let ready = state.ready.load(Ordering::Relaxed);
    let body = ModelReady {
        name: served.name.clone(),
        ready,
    };
    Ok(if ready {
        to_json(StatusCode::OK, &body)
    } else {
        ApiError(Error::ModelNotReady(format!(
            "model '{model}' is not ready"
        )))
        .into_response()
    })
}

async fn infer(
    state: State<AppState>,
    Path(model): Path<String>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let client = client.map(|c| c.0.0);
    run_infer(&state, &model, None, &headers, client, body).await
}

async fn infer_v(
    state: State<AppState>,
    Path((model, version)): Path<(String, String)>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let client = client.map(|c| c.0.0);
    run_infer(&state, &model, Some(&version), &headers, client, body).await
}

/// The request id header: accepted from the client, always returned.
pub const X_REQUEST_ID: &str = "x-request-id";

async fn run_infer(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    client: Option<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let decoded = decode_body(state, headers, body);
    let binary = decoded
        .as_ref()
        .map(json::BinaryOutputs::from_request)
        .unwrap_or_default();
    let call = pipeline::Call {
        model,
        version,
        protocol: Protocol::Http,
        client,
        header_id: headers
            .get(X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string),
    };
    let (id, result) = pipeline::handle(state, call, decoded).await;
    let mut response = match result.and_then(|r| json::encode_infer_response(&r, &binary)) {
        Ok(encoded) => match encoded.json_len {
            None => json_response(StatusCode::OK, encoded.body),
            Some(len) => {
                let mut response = (StatusCode::OK, encoded.body).into_response();
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                headers.insert(INFERENCE_HEADER_CONTENT_LENGTH, HeaderValue::from(len));
                response
            }
        },
        Err(e) => ApiError(e).into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}

fn decode_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<oxinfer_core::protocol::InferRequest, Error> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(state.max_request_bytes).0
        } else {
            Error::invalid(format!("cannot read request body: {rejection}"))
        }
    })?;
    let json_len = match headers.get(INFERENCE_HEADER_CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::invalid("Inference-Header-Content-Length must be a non-negative integer")
                })?,
        ),
    };
    json::decode_infer_request(&body, json_len)
}

async fn metrics(State(state): State<AppState>) -> Response {
    let models = state.repository.ready_models();
    let views: Vec<ModelView<'_>> = models
        .iter()
        .map(|m| ModelView {
            name: &m.name,
            version: &m.version,
            metrics: &m.metrics,
            runtime: m.model.counters(),
            scheduler: m.scheduler.counters(),
        })
        .collect();
    let (written, dropped) = state.log.as_ref().map_or((0, 0), |log| {
        let c = log.counters();
        (
            c.written.load(std::sync::atomic::Ordering::Relaxed),
            c.dropped.load(std::sync::atomic::Ordering::Relaxed),
        )
    });
    let text = crate::metrics::render(&views, &state.metrics, written, dropped);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn model_config(state: State<AppState>, Path(model): Path<String>) -> ApiResult {
    config(&state, &model, None)
}

async fn model_config_v(
    state: State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    config(&state, &model, Some(&version))
}

fn config(state: &AppState, model: &str, version: Option<&str>) -> ApiResult {
    let served = lookup(state, model, version)?;
    Ok(to_json(StatusCode::OK, &ModelConfig::of(&served)))
}

/// One `model_stats` entry of Triton's statistics extension.
#[derive(Serialize)]
struct ModelStatsJson {
    name: String,
    version: String,
    last_inference: u64,
    inference_count: u64,
    execution_count: u64,
    inference_stats: InferenceStats,
    batch_stats: Vec<()>,
    memory_usage: Vec<()>,
    /// oxinfer's addition: the runtime's own counters (e.g. tract's plan compilations).
    runtime_counters: BTreeMap<&'static str, u64>,
}

fn stats_json(model: &ServedModel) -> ModelStatsJson {
    let s = model.stats.snapshot();
    ModelStatsJson {
        name: model.name.clone(),
        version: model.version.clone(),
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: s.inference_stats,
        batch_stats: Vec::new(),
        memory_usage: Vec::new(),
        runtime_counters: model.model.counters().into_iter().collect(),
    }
}

fn stats(models: Vec<Arc<ServedModel>>) -> ApiResult {
    let model_stats: Vec<_> = models.iter().map(|m| stats_json(m)).collect();
    Ok(to_json(
        StatusCode::OK,
        &serde_json::json!({ "model_stats": model_stats }),
    ))
}

async fn all_stats(state: State<AppState>) -> ApiResult {
    stats(state.repository.ready_models())
}

async fn model_stats(state: State<AppState>, Path(model): Path<String>) -> ApiResult {
    stats(state.repository.ready_versions(&model)?)
}

async fn model_stats_v(
    state: State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult {
    let served = lookup(&state, &model, Some(&version))?;
    stats(vec![served])
}

#[derive(Deserialize, Default)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

/// Parses an optional JSON body (the Python client sends none).
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Error::invalid(format!("malformed request body: {e}")))
}

async fn repository_index(state: State<AppState>, body: Bytes) -> ApiResult {
    let request: IndexRequest = optional_json(&body)?;
    Ok(to_json(
        StatusCode::OK,
        &state.repository.index(request.ready),
    ))
}

#[derive(Deserialize, Default)]
struct RepositoryParameters {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

async fn repository_load(
    state: State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let request: RepositoryParameters = optional_json(&body)?;
    if let Some(key) = request.parameters.keys().next() {
        return Err(ApiError(Error::invalid(format!(
            "load parameter '{key}' is not supported: oxinfer loads a model only from the files \
             its manifest lists"
        ))));
    }
    let repository = state.repository.clone();
    let name = model.clone();
    tokio::task::spawn_blocking(move || repository.reload(&name))
        .await
        .map_err(|e| Error::Internal(format!("loading model '{model}' panicked: {e}")))??;
    Ok(to_json(StatusCode::OK, &serde_json::json!({})))
}

async fn repository_unload(
    state: State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let request: RepositoryParameters = optional_json(&body)?;
    if let Some(key) = request
        .parameters
        .keys()
        .find(|k| *k != "unload_dependents")
    {
        return Err(ApiError(Error::invalid(format!(
            "unload parameter '{key}' is not supported"
        ))));
    }
    let repository = state.repository.clone();
    let name = model.clone();
    tokio::task::spawn_blocking(move || repository.unload(&name))
        .await
        .map_err(|e| Error::Internal(format!("unloading model '{model}' panicked: {e}")))??;
    Ok(to_json(StatusCode::OK, &serde_json::json!({})))
}
