//! The OIP REST API (axum): routes, handlers, and the mapping of errors to HTTP.
//!
//! Every model endpoint exists with and without `/versions/{v}`; one handler serves both through
//! the [`ModelPath`] extractor, and the unversioned form resolves to the highest version served.
//! Every error is `{"error": "..."}` with `Content-Type: application/json` (no charset: the
//! kserve client compares the header exactly).

use std::collections::{BTreeMap, HashMap};

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use oxinfer_core::protocol::{
    ErrorBody, InferRequest, ModelReady, ServerLive, ServerReady, json, raw,
};
use oxinfer_core::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;

use crate::admin;
use crate::api::embeddings;
use crate::api::http::{Frames, X_REQUEST_ID, json_response};
use crate::auth::Grant;
use crate::budget::{self, CountedBody, HeldBody, Reservation};
use crate::models::ServedModel;
use crate::models::model_config::ModelConfig;
use crate::pipeline;
use crate::state::AppState;
use crate::telemetry::stats::InferenceStats;
use crate::telemetry::{Protocol, metrics};

/// An error on its way to an HTTP client.
#[derive(Debug)]
struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

fn to_json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(status, body),
        Err(e) => ApiError(Error::Internal(e.to_string())).into_response(),
    }
}

fn ok<T: Serialize>(value: &T) -> ApiResult {
    Ok(to_json(StatusCode::OK, value))
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
const INFERENCE_HEADER_CONTENT_LENGTH: HeaderName =
    HeaderName::from_static("inference-header-content-length");

/// The REST API over `state`. Tested without a socket through `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> RestApp {
    // The limit applies to the decompressed body: a small gzip bomb cannot exceed it. The
    // inference route reads its body itself, under the same limit (`InferBody`): without the
    // layer, it is spared a level of routing on every request.
    let limited = routes(&state)
        .layer(DefaultBodyLimit::max(state.max_request_bytes))
        .merge(
            // Its other methods get the same JSON 405 as every route's (set before merging:
            // the fallback applies to the routes already there).
            model_route(Router::new(), "/infer", post(infer))
                .method_not_allowed_fallback(method_not_allowed),
        );
    let plain = limited.clone().with_state(state.clone());
    let encoded = limited
        .layer(RequestDecompressionLayer::new())
        .layer(CompressionLayer::new())
        .with_state(state.clone());
    RestApp {
        state,
        plain,
        encoded,
    }
}

/// The REST API as a service: every route, behind the checks every call passes (the front door:
/// CORS, access control, admission), in two stacks. A request that sends a compressed body
/// (`Content-Encoding`) or accepts a compressed answer (`Accept-Encoding` other than
/// `identity`) goes through tower-http's decompression and compression layers; one that does
/// neither (curl, wrk, Python's `http.client`) skips them, since they would pass it through
/// unchanged. Skipping them took a tiny model's server CPU from about 77 to 70 µs per request
/// (REST JSON, 16 connections).
///
/// The one difference on the wire: the compression layer marks a compressible answer
/// `Vary: Accept-Encoding` whatever the request said; the plain stack does not, because its
/// answer (identity) is valid for any `Accept-Encoding` a cache could later see.
///
/// The checks run in [`RestApp`]'s own `call`, before the router: as a middleware layer on the
/// router (`from_fn`), they cost every request a boxed copy of the rest of the stack and a
/// boxed future, one level of routing per layer. Run here, they cost about 5 µs less server CPU
/// per request and 13 allocations fewer (tiny model, REST JSON, 16 connections).
#[derive(Clone)]
pub struct RestApp {
    state: AppState,
    plain: Router,
    encoded: Router,
}

impl std::fmt::Debug for RestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestApp").finish_non_exhaustive()
    }
}

impl<B> tower::Service<axum::http::Request<B>> for RestApp
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = FrontDoor;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Both routers are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let request = request.map(Body::new);
        if encoded(request.headers()) {
            front_door(&self.state, Next::Router(&mut self.encoded), request)
        } else {
            front_door(&self.state, Next::Plain(&mut self.plain), request)
        }
    }
}

/// Where [`front_door`] sends a call it lets through.
enum Next<'a> {
    /// The stack with the compression layers: every call goes to its router.
    Router(&'a mut Router),
    /// The plain stack: an inference call goes to its handler directly ([`infer_path`]),
    /// others to the router.
    Plain(&'a mut Router),
}

/// The model path of `POST /v2/models/{model}[/versions/{version}]/infer` whose segments need no
/// percent-decoding; `None` for any other request, which the router then matches (and answers
/// exactly as before: a segment with `%`, an empty one, another method).
fn infer_path(request: &Request) -> Option<ModelPath> {
    if request.method() != axum::http::Method::POST {
        return None;
    }
    let segments = request
        .uri()
        .path()
        .strip_prefix("/v2/models/")?
        .strip_suffix("/infer")?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '%']);
    let (model, version) = match segments.split_once("/versions/") {
        None => (segments, None),
        Some((model, version)) => (model, Some(version)),
    };
    (plain(model) && version.is_none_or(plain)).then(|| ModelPath {
        model: Some(model.to_string()),
        version: version.map(str::to_string),
    })
}

/// The inference route's handler called from the front door, as the router would call it
/// (extractors, then `Content-Length` from the body's exact size): without matching the path
/// against every route, collecting its parameters into a map and boxing the call once more
/// (7 allocations of a tiny model's request, and a median 73 -> 60 µs of server CPU per request at
/// c=16 in alternating rounds).
async fn infer_direct(state: AppState, path: ModelPath, request: Request) -> Response {
    let caller = crate::listen::Caller::of(request.extensions());
    // The headers move into the handler (its `HeaderMap` extractor would clone them).
    let (parts, body) = request.into_parts();
    let body = InferBody::read(&parts.headers, body, &state).await;
    let mut response = infer(State(state), path, caller, parts.headers, body).await;
    if !response.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(size) = http_body::Body::size_hint(response.body()).exact()
    {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    response
}

/// The checks every REST call passes before the router sees it, in this order:
/// 1. [`browser_check`]: requests from web pages (CORS), and CORS preflights answered;
/// 2. [`super::http::authorize`]: access control, before anything of the body is read or
///    reserved (and after the browser check: a CORS preflight carries no token);
/// 3. [`super::http::admit`]: `max_concurrent_requests`, for the callers access control let
///    through;
/// 4. a declared `Content-Length` over `max_request_bytes`: 413 before anything of the body is
///    read (the body limit alone would read up to the limit first).
///
/// Every path goes through them, routed or not (the fallbacks answer 404 and 405).
fn front_door(state: &AppState, next: Next<'_>, mut request: Request) -> FrontDoor {
    let origin = match browser_check(state, &request) {
        Ok(origin) => origin,
        Err(refused) => return FrontDoor::answered(*refused, None),
    };
    if origin.is_some() && request.method() == axum::http::Method::OPTIONS {
        return FrontDoor::answered(preflight(), origin);
    }
    if let Err(refused) = super::http::authorize(state, &mut request) {
        return FrontDoor::answered(*refused, origin);
    }
    let guard = match super::http::admit(state, &request) {
        Ok(guard) => guard,
        Err(refused) => return FrontDoor::answered(*refused, origin),
    };
    if declared_length(request.headers()).is_some_and(|n| n > state.max_request_bytes as u64) {
        // Dropping the guard here, before the answer: the request is over.
        return FrontDoor::answered(too_large(state.max_request_bytes).into_response(), origin);
    }
    let routed = match next {
        Next::Plain(router) => match infer_path(&request) {
            Some(path) => Routed::Direct(Box::pin(infer_direct(state.clone(), path, request))),
            None => Routed::Router(tower::Service::call(router, request)),
        },
        Next::Router(router) => Routed::Router(tower::Service::call(router, request)),
    };
    FrontDoor {
        routed: Some(routed),
        answer: None,
        guard: Some(guard),
        origin,
    }
}

/// The future of a REST call ([`RestApp`]): the router's answer, its body holding the call's
/// admission (`max_concurrent_requests`) until it is sent, with the CORS headers of an allowed
/// origin; or the front door's own answer.
pub struct FrontDoor {
    routed: Option<Routed>,
    answer: Option<Response>,
    guard: Option<crate::listen::RequestGuard>,
    origin: Option<HeaderValue>,
}

/// A call the front door let through: to the router, or to the inference handler directly.
// The router's future is kept inline, as before: boxing it would cost every routed call an
// allocation, to save the moves of a future that is moved once (into the connection's task).
#[allow(clippy::large_enum_variant)]
enum Routed {
    Router(axum::routing::future::RouteFuture<std::convert::Infallible>),
    Direct(std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>),
}

impl FrontDoor {
    fn answered(response: Response, origin: Option<HeaderValue>) -> FrontDoor {
        FrontDoor {
            routed: None,
            answer: Some(response),
            guard: None,
            origin,
        }
    }
}

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor").finish_non_exhaustive()
    }
}

impl std::future::Future for FrontDoor {
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let mut response = match this.routed.as_mut() {
            Some(Routed::Router(routed)) => match std::pin::Pin::new(routed).poll(cx) {
                std::task::Poll::Pending => return std::task::Poll::Pending,
                std::task::Poll::Ready(Ok(response)) => response,
                std::task::Poll::Ready(Err(never)) => match never {},
            },
            Some(Routed::Direct(call)) => match call.as_mut().poll(cx) {
                std::task::Poll::Pending => return std::task::Poll::Pending,
                std::task::Poll::Ready(response) => response,
            },
            None => this
                .answer
                .take()
                .expect("a FrontDoor is polled after it is done only by mistake"),
        };
        this.routed = None;
        if let Some(guard) = this.guard.take() {
            response = response.map(|body| Body::new(crate::listen::GuardedBody::new(body, guard)));
        }
        if let Some(origin) = this.origin.take() {
            response = with_cors(response, origin);
        }
        std::task::Poll::Ready(Ok(response))
    }
}

/// Whether a request needs the compression layers: its body is encoded (any
/// `Content-Encoding`, `identity` included: the layer answers an unknown one with 415), or it
/// accepts an encoding other than `identity` (Python's `http.client` sends
/// `Accept-Encoding: identity` on every request).
fn encoded(headers: &HeaderMap) -> bool {
    // A value that is not text is left to the layer to judge.
    let names_other = |value: &HeaderValue| match value.to_str() {
        Err(_) => true,
        Ok(codings) => codings
            .split(',')
            .map(|coding| coding.split(';').next().unwrap_or_default().trim())
            .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity")),
    };
    headers.contains_key(header::CONTENT_ENCODING)
        || headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .any(names_other)
}

/// A model route, with and without the version segment, to one handler.
fn model_route(
    router: Router<AppState>,
    tail: &str,
    route: axum::routing::MethodRouter<AppState>,
) -> Router<AppState> {
    router
        .route(&format!("/v2/models/{{model}}{tail}"), route.clone())
        .route(
            &format!("/v2/models/{{model}}/versions/{{version}}{tail}"),
            route,
        )
}

/// Every REST route but inference's (which [`app`] adds) and the fallbacks, before the layers
/// [`app`] puts around them.
fn routes(state: &AppState) -> Router<AppState> {
    let mut router = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(statistics));
    for (tail, route) in [
        ("", get(model_metadata)),
        ("/ready", get(model_ready)),
        ("/config", get(model_config)),
        ("/stats", get(statistics)),
    ] {
        router = model_route(router, tail, route);
    }
    router
        .merge(embeddings::routes(state))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/metrics", get(prometheus_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Request headers a browser page may send cross-origin (answered to a CORS preflight).
const CORS_ALLOW_HEADERS: &str =
    "content-type, content-encoding, inference-header-content-length, x-request-id, authorization";

/// Keeps web pages from driving the server (cross-site request forgery): a request carrying an
/// `Origin` header (every browser sends one with a cross-origin request) is refused with 403
/// unless `[server] cors_origins` allows that origin, and a body whose `Content-Type` is not
/// JSON or binary (`text/plain`, a form: what a page can send without a preflight) is refused
/// with 415. Returns the allowed origin, whose response gets the CORS headers ([`with_cors`]).
/// A refusal is boxed: it is the rare path, and a `Response` would make every `Result` large.
fn browser_check(
    state: &AppState,
    request: &Request,
) -> Result<Option<HeaderValue>, Box<Response>> {
    let refuse =
        |status: StatusCode, error: String| Box::new(to_json(status, &ErrorBody { error }));
    if let Some(kind) = request.headers().get(header::CONTENT_TYPE) {
        // Compared without case and without a copy (this runs on every request); `to_str`
        // has left only visible ASCII.
        let kind = kind.to_str().unwrap_or_default();
        let essence = kind.split(';').next().unwrap_or_default().trim().as_bytes();
        let is = |expected: &str| essence.eq_ignore_ascii_case(expected.as_bytes());
        let starts = |prefix: &str| {
            essence.len() >= prefix.len()
                && essence[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        };
        let ends = |suffix: &str| {
            essence.len() >= suffix.len()
                && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
        };
        let accepted = is("application/json")
            || (starts("application/") && ends("+json"))
            || is("application/octet-stream");
        if !accepted {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type '{}' is not accepted: send application/json (or \
                     application/octet-stream with the binary tensor extension); with curl, \
                     add -H 'content-type: application/json'",
                    String::from_utf8_lossy(essence).to_ascii_lowercase()
                ),
            ));
        }
    }
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return Ok(None);
    };
    let text = origin.to_str().unwrap_or_default();
    if !state.cors_origins.iter().any(|o| o == "*" || o == text) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "requests from web pages are refused (Origin: {}); allow the origin with \
                 [server] cors_origins",
                text.chars().take(200).collect::<String>()
            ),
        ));
    }
    Ok(Some(origin.clone()))
}

/// The answer to an allowed origin's CORS preflight (`OPTIONS`).
fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_ALLOW_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

/// The CORS response headers for an allowed origin.
fn with_cors(mut response: Response, origin: HeaderValue) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-request-id, inference-header-content-length"),
    );
    response
}

/// The `{model}` and optional `{version}` segments of a model route. Absent (`/v2/models/stats`),
/// `model` is `None`.
struct ModelPath {
    model: Option<String>,
    version: Option<String>,
}

impl ModelPath {
    /// The model name of a route that always has one.
    fn name(&self) -> &str {
        self.model.as_deref().unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ModelPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let mut segments = match Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
        {
            Ok(Path(segments)) => segments,
            // A route without parameters.
            Err(axum::extract::rejection::PathRejection::MissingPathParams(_)) => HashMap::new(),
            Err(e) => return Err(ApiError(Error::invalid(format!("bad URL path: {e}")))),
        };
        Ok(ModelPath {
            model: segments.remove("model"),
            version: segments.remove("version"),
        })
    }
}

/// The body's length as the client declared it (`Content-Length`), if it is a number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn too_large(limit: usize) -> ApiError {
    ApiError(Error::TooLarge(format!(
        "request body is larger than the limit of {limit} bytes (server setting max_request_bytes)"
    )))
}

async fn not_found(request: Request) -> Response {
    ApiError(Error::NotFound(format!(
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

async fn server_metadata() -> ApiResult {
    ok(&admin::server_metadata())
}

async fn live() -> ApiResult {
    ok(&ServerLive { live: true })
}

async fn ready(State(state): State<AppState>) -> ApiResult {
    if !state.is_ready() {
        return Err(ApiError(Error::ModelNotReady(
            "server is shutting down".into(),
        )));
    }
    ok(&ServerReady { ready: true })
}

async fn model_metadata(State(state): State<AppState>, path: ModelPath) -> ApiResult {
    let served = state.repository.get(path.name(), path.version.as_deref())?;
    ok(&state.repository.metadata(&served))
}

async fn model_ready(State(state): State<AppState>, path: ModelPath) -> ApiResult {
    let (served, ready) = admin::model_readiness(&state, path.name(), path.version.as_deref())?;
    if !ready {
        return Err(ApiError(Error::ModelNotReady(format!(
            "model '{}' is not ready",
            path.name()
        ))));
    }
    ok(&ModelReady {
        name: served.name.clone(),
        ready,
    })
}

async fn model_config(State(state): State<AppState>, path: ModelPath) -> ApiResult {
    let served = state.repository.get(path.name(), path.version.as_deref())?;
    ok(&ModelConfig::of(&served))
}

/// An inference request's body in one buffer, or why it could not be read (over
/// `max_request_bytes`, over the in-flight budget, or the connection failed), and the call's
/// [`Reservation`] against `[server] max_inflight_bytes`: each chunk is counted in it as it
/// arrives (over the budget: 503), and the handler holds it until its response has been sent.
/// (Other routes get theirs from the [`hold_budget`](crate::api::http::hold_budget) layer; here it is done in the extractor,
/// which spares the inference route a middleware layer on every request.)
///
/// With a `Content-Length`, the buffer is allocated at that size when the first bytes arrive
/// and each chunk is copied into it and dropped, so a body is never held twice while it is
/// assembled (axum's `Bytes` extractor keeps every chunk until the end, then copies them all
/// into one buffer: twice the body at that moment). A client that declares a length and sends
/// nothing allocates nothing; the declared length is at most `max_request_bytes`
/// (refused in [`front_door`] otherwise), and pages not yet written are not resident.
///
/// With the binary tensor extension and a `Content-Length`, the buffer starts with up to
/// [`BINARY_ALIGN`] - 1 bytes of padding (sliced off) so that the binary data after the JSON
/// header is aligned: a runtime that reads tensors in place (onnxruntime) then needs no aligned
/// copy of them. (A body without a declared length grows its buffer, which may move it.)
struct InferBody {
    body: Result<Bytes, Error>,
    held: Reservation,
}

/// The alignment of the binary data in an assembled REST body (a cache line; more than any
/// element type needs).
const BINARY_ALIGN: usize = 64;

impl FromRequest<AppState> for InferBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        Ok(InferBody::read(&parts.headers, body, state).await)
    }
}

impl InferBody {
    /// Reads the body of a request with these `headers`.
    async fn read(headers: &HeaderMap, body: Body, state: &AppState) -> InferBody {
        use http_body_util::BodyExt;
        let limit = state.max_request_bytes;
        let declared = declared_length(headers)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= limit);
        let json_len = inference_header_length(headers)
            .ok()
            .flatten()
            .filter(|&n| n <= limit);
        let held = state.budget.reservation();
        let mut body = CountedBody::new(body, held.clone(), |e| Box::new(e));
        let refused = |error| InferBody {
            body: Err(error),
            held: held.clone(),
        };
        let mut buffer: Vec<u8> = Vec::new();
        let mut pad = 0;
        let mut single: Option<Bytes> = None;
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Err(e) => {
                    let error = budget::refusal_in(e.as_ref()).unwrap_or_else(|| {
                        Error::invalid(format!("cannot read request body: {e}"))
                    });
                    return refused(error);
                }
            };
            let held = buffer.len() - pad + single.as_ref().map_or(0, Bytes::len);
            if held + data.len() > limit {
                return refused(too_large(limit).0);
            }
            // A body that arrives in one chunk is kept as it is: no copy at all.
            if held == 0 && single.is_none() {
                single = Some(data);
                continue;
            }
            if let Some(first) = single.take() {
                let expected = declared.unwrap_or(0).max(first.len() + data.len());
                buffer.reserve_exact(expected + BINARY_ALIGN);
                if let Some(json_len) = json_len {
                    let at = buffer.as_ptr() as usize + json_len;
                    pad = (BINARY_ALIGN - at % BINARY_ALIGN) % BINARY_ALIGN;
                    buffer.resize(pad, 0);
                }
                buffer.extend_from_slice(&first);
            }
            buffer.extend_from_slice(&data);
        }
        let body = match single {
            Some(only) => only,
            None => Bytes::from(buffer).slice(pad..),
        };
        InferBody {
            body: Ok(body),
            held,
        }
    }
}

async fn infer(
    State(state): State<AppState>,
    path: ModelPath,
    caller: crate::listen::Caller,
    headers: HeaderMap,
    InferBody { body, held }: InferBody,
) -> Response {
    // Large bodies are parsed on a blocking thread, so that a few big JSON requests cannot hold
    // up the I/O threads (and with them liveness probes and small requests).
    // Nothing of the body is decoded for a model that is not served (the pipeline reports the
    // lookup's error), and each input is checked against the model before its data is decoded.
    let json_len = inference_header_length(&headers);
    let body_for_id = body.as_ref().ok().cloned();
    let json_len_for_id = json_len.as_ref().ok().copied().flatten();
    let target = state.repository.get(path.name(), path.version.as_deref());
    // The body is held now; each input's data is reserved by its declared shape before it is
    // decoded, and once decoded the reservation is what decoding actually copied out.
    let base = held.bytes();
    let decoded = match &target {
        Err(e) => Err(e.clone()),
        Ok(model) => match body {
            Ok(body) if body.len() > OFFLOAD_BYTES => {
                let model = model.clone();
                let held = held.clone();
                tokio::task::spawn_blocking(move || decode_body(&model, &held, json_len, Ok(body)))
                    .await
                    .unwrap_or_else(|e| Err(Error::Internal(format!("decoding panicked: {e}"))))
            }
            body => decode_body(model, &held, json_len, body),
        },
    };
    let decoded = decoded.and_then(|request| {
        let body = body_for_id.as_deref().unwrap_or_default();
        let copied = request.inputs.iter().fold(0usize, |n, t| {
            n.saturating_add(budget::held_outside(t, body))
        });
        held.set(base.saturating_add(copied))?;
        Ok(request)
    });
    let binary = decoded
        .as_ref()
        .map(json::BinaryOutputs::from_request)
        .unwrap_or_default();
    // A body that was not decoded (unknown model, bad input) may still name the request's id:
    // read on its own, it goes with the answer and the log record, before the header's.
    let peeked_id = match (&decoded, &body_for_id) {
        (Err(_), Some(body)) => json::peek_request_id(body, json_len_for_id),
        _ => None,
    };
    let header_id = headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let call = pipeline::Call {
        model: path.name(),
        version: path.version.as_deref(),
        protocol: Protocol::Http,
        caller,
        fallback_id: peeked_id.or(header_id),
        target,
        encodable: Some(&|r: &oxinfer_core::protocol::InferResponse| binary.check_encodable(r)),
        held: Some(held.clone()),
        user: None,
    };
    let (id, result) = pipeline::handle(&state, call, decoded).await;
    let encoded = match result {
        Ok(r) if r.outputs.iter().map(raw::raw_len).sum::<usize>() > OFFLOAD_BYTES => {
            tokio::task::spawn_blocking(move || json::encode_infer_response(&r, &binary))
                .await
                .unwrap_or_else(|e| Err(Error::Internal(format!("encoding panicked: {e}"))))
        }
        result => result.and_then(|r| json::encode_infer_response(&r, &binary)),
    };
    if let Ok(encoded) = &encoded {
        held.add(encoded.len());
    }
    let mut response = match encoded {
        Ok(encoded) => match encoded.json_len {
            None => json_response(StatusCode::OK, encoded.json),
            Some(len) => {
                let frames = std::iter::once(Bytes::from(encoded.json)).chain(encoded.binary);
                let mut response = (StatusCode::OK, Body::new(Frames::new(frames))).into_response();
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
    // The id's own buffer becomes the header's, not a copy.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(id)) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    // The reservation is held until the response has been sent.
    response.map(|body| Body::new(HeldBody::new(body, held)))
}

/// Request bodies and responses larger than this are decoded and encoded on a blocking thread.
const OFFLOAD_BYTES: usize = 256 * 1024;

/// The binary extension's JSON length (`Inference-Header-Content-Length`), if the header is set.
fn inference_header_length(headers: &HeaderMap) -> Result<Option<usize>, Error> {
    headers
        .get(INFERENCE_HEADER_CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::invalid("Inference-Header-Content-Length must be a non-negative integer")
                })
        })
        .transpose()
}

/// The request body as an [`InferRequest`]: JSON, or JSON followed by binary tensor data when
/// `Inference-Header-Content-Length` is set.
fn decode_body(
    model: &ServedModel,
    held: &Reservation,
    json_len: Result<Option<usize>, Error>,
    body: Result<Bytes, Error>,
) -> Result<InferRequest, Error> {
    let body = body?;
    json::decode_infer_request_checked(&body, json_len?, &|name, datatype, shape, copied| {
        pipeline::check_before_decoding(model, name, datatype, shape)?;
        // Binary extension data is a view of the body, which is already held.
        if copied {
            held.grow(budget::declared_bytes(datatype, shape))?;
        }
        Ok(())
    })
}

async fn prometheus_metrics(State(state): State<AppState>) -> Response {
    let mut response = admin::metrics(&state).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
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

async fn statistics(
    State(state): State<AppState>,
    path: ModelPath,
    grant: Option<Extension<Grant>>,
) -> ApiResult {
    let grant = grant.as_ref().map(|g| &g.0);
    let model_stats: Vec<ModelStatsJson> = admin::statistics(
        &state,
        path.model.as_deref(),
        path.version.as_deref(),
        grant,
    )?
    .into_iter()
    .map(|m| ModelStatsJson {
        name: m.name,
        version: m.version,
        last_inference: m.stats.last_inference,
        inference_count: m.stats.inference_count,
        execution_count: m.stats.execution_count,
        inference_stats: m.stats.inference_stats,
        batch_stats: Vec::new(),
        memory_usage: Vec::new(),
        runtime_counters: m.runtime_counters,
    })
    .collect();
    ok(&serde_json::json!({ "model_stats": model_stats }))
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

async fn repository_index(
    State(state): State<AppState>,
    grant: Option<Extension<Grant>>,
    body: Bytes,
) -> ApiResult {
    let request: IndexRequest = optional_json(&body)?;
    ok(&admin::index(
        &state,
        request.ready,
        grant.as_ref().map(|g| &g.0),
    ))
}

#[derive(Deserialize, Default)]
struct RepositoryParameters {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

async fn repository_load(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let request: RepositoryParameters = optional_json(&body)?;
    admin::load(
        &state,
        &model,
        request.parameters.keys().map(String::as_str),
    )
    .await?;
    ok(&serde_json::json!({}))
}

async fn repository_unload(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let request: RepositoryParameters = optional_json(&body)?;
    admin::unload(
        &state,
        &model,
        request.parameters.keys().map(String::as_str),
    )
    .await?;
    ok(&serde_json::json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelRepository, RuntimeRegistry};

    /// Only a POST to an inference path whose segments need no decoding is called directly.
    #[test]
    fn only_plain_inference_paths_skip_the_router() {
        let parsed = |method: &str, uri: &str| {
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            infer_path(&request).map(|p| (p.model, p.version))
        };
        let some = |m: &str, v: Option<&str>| Some((Some(m.to_string()), v.map(str::to_string)));
        assert_eq!(parsed("POST", "/v2/models/m/infer"), some("m", None));
        assert_eq!(parsed("POST", "/v2/models/m/infer?x=1"), some("m", None));
        assert_eq!(
            parsed("POST", "/v2/models/m/versions/2/infer"),
            some("m", Some("2"))
        );
        assert_eq!(
            parsed("POST", "/v2/models/versions/infer"),
            some("versions", None)
        );
        assert_eq!(
            parsed("POST", "/v2/models/a.b-c_d+e/infer"),
            some("a.b-c_d+e", None)
        );
        for (method, uri) in [
            ("GET", "/v2/models/m/infer"),
            ("PUT", "/v2/models/m/infer"),
            ("POST", "/v2/models/m/infer/"),
            ("POST", "/v2/models//infer"),
            ("POST", "/v2/models/m%20n/infer"),
            ("POST", "/v2/models/m/versions/%31/infer"),
            ("POST", "/v2/models/m/versions//infer"),
            ("POST", "/v2/models/m/versions/infer"),
            ("POST", "/v2/models/a/b/infer"),
            ("POST", "/v2/models/m/versions/1/2/infer"),
            ("POST", "/v2/models/m/ready"),
            ("POST", "/v2/models/infer"),
            ("POST", "/v2//models/m/infer"),
        ] {
            assert_eq!(parsed(method, uri), None, "{method} {uri}");
        }
    }

    fn state(limit: usize) -> AppState {
        let manifest =
            oxinfer_core::Manifest::parse("", std::path::Path::new("test.toml")).unwrap();
        let repository = ModelRepository::load(RuntimeRegistry::new(), manifest).unwrap();
        AppState::new(repository, limit)
    }

    /// A request whose body arrives in `chunks`, with the given headers.
    fn request(chunks: Vec<Vec<u8>>, headers: &[(&str, String)]) -> Request {
        let stream = tokio_stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
        );
        let mut builder = Request::builder().method("POST").uri("/v2/models/m/infer");
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        builder.body(Body::from_stream(stream)).unwrap()
    }

    #[test]
    fn only_json_and_binary_bodies_pass_the_browser_check() {
        let state = state(1024);
        let status = |kind: &[u8]| {
            let request = Request::builder()
                .method("POST")
                .uri("/v2/models/m/infer")
                .header(header::CONTENT_TYPE, HeaderValue::from_bytes(kind).unwrap())
                .body(Body::empty())
                .unwrap();
            browser_check(&state, &request).map_err(|refused| refused.status())
        };
        for accepted in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"application/vnd.kserve+json",
            b"APPLICATION/X+JSON",
            b"application/+json",
            b"application/octet-stream",
            b" application/octet-stream ;x=1",
        ] {
            assert_eq!(status(accepted), Ok(None), "{accepted:?}");
        }
        for refused in [
            &b"text/plain"[..],
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
            b"application/json5",
            b"text/+json",
            b"+json",
            b"",
            b"application/j\xc3\xa9son",
        ] {
            assert_eq!(
                status(refused),
                Err(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn only_requests_with_an_encoding_take_the_compression_layers() {
        let headers = |pairs: &[(&str, &[u8])]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(
                    header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_bytes(value).unwrap(),
                );
            }
            map
        };
        assert!(!encoded(&headers(&[])));
        assert!(!encoded(&headers(&[("accept-encoding", b"identity")])));
        assert!(!encoded(&headers(&[(
            "accept-encoding",
            b" Identity ;q=1, "
        )])));
        assert!(!encoded(&headers(&[("accept-encoding", b"")])));
        assert!(encoded(&headers(&[("accept-encoding", b"gzip")])));
        assert!(encoded(&headers(&[(
            "accept-encoding",
            b"identity, deflate;q=0.5"
        )])));
        assert!(encoded(&headers(&[("accept-encoding", b"*")])));
        assert!(encoded(&headers(&[
            ("accept-encoding", b"identity"),
            ("accept-encoding", b"br")
        ])));
        // Not text: left to the layer to judge.
        assert!(encoded(&headers(&[("accept-encoding", b"\xffgzip")])));
        assert!(encoded(&headers(&[("content-encoding", b"gzip")])));
        assert!(encoded(&headers(&[("content-encoding", b"identity")])));
    }

    #[tokio::test]
    async fn a_chunked_binary_body_is_assembled_once_with_its_tensor_data_aligned() {
        let json = br#"{"inputs":[]}"#.to_vec(); // 13 bytes: the data would start unaligned
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let whole = [json.clone(), data.clone()].concat();
        let chunks = whole.chunks(1000).map(<[u8]>::to_vec).collect();
        let headers = [
            ("content-length", whole.len().to_string()),
            ("inference-header-content-length", json.len().to_string()),
        ];
        let InferBody { body, .. } =
            InferBody::from_request(request(chunks, &headers), &state(1 << 20))
                .await
                .unwrap();
        let body = body.unwrap();
        assert_eq!(&body[..], &whole[..]);
        assert_eq!(body[json.len()..].as_ptr() as usize % BINARY_ALIGN, 0);
    }

    #[tokio::test]
    async fn a_body_in_one_chunk_is_kept_as_it_came() {
        let whole = b"{\"inputs\":[]}".to_vec();
        let InferBody { body, .. } =
            InferBody::from_request(request(vec![whole.clone()], &[]), &state(64))
                .await
                .unwrap();
        assert_eq!(&body.unwrap()[..], &whole[..]);
    }

    #[tokio::test]
    async fn a_body_without_length_over_the_limit_is_refused_as_too_large() {
        let chunks = vec![vec![b' '; 40], vec![b' '; 40]];
        let InferBody { body, .. } = InferBody::from_request(request(chunks, &[]), &state(64))
            .await
            .unwrap();
        assert!(matches!(body, Err(Error::TooLarge(_))), "{body:?}");
    }
}
