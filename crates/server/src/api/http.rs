//! What the HTTP routes share (OIP's REST API and the embedding APIs): JSON responses, the
//! in-flight budget middleware and access control (`[auth]`).

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::borrow::Cow;

use oxinfer_core::manifest::Scope;

use crate::auth::Need;
use crate::budget::{CountedBody, HeldBody};
use crate::listen::{Caller, Identity};
use crate::state::AppState;

/// The request id header (OIP and the embedding APIs): accepted from the client, always
/// returned. A `HeaderName`, not a `&str`: inserting a custom header by `&str` copies the name
/// into a new allocation.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A response with a JSON body (`Content-Type: application/json`, no charset: the kserve client
/// compares the header exactly).
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A response body sent as the buffers it is made of, in order, without joining them: the
/// binary tensor extension's JSON header, then each binary output's own bytes (hyper writes
/// them with vectored writes). Its exact length is known, so HTTP/1.1 gets a `Content-Length`.
pub(crate) struct Frames {
    frames: std::collections::VecDeque<bytes::Bytes>,
    remaining: u64,
}

impl Frames {
    pub(crate) fn new(frames: impl IntoIterator<Item = bytes::Bytes>) -> Self {
        let frames: std::collections::VecDeque<_> =
            frames.into_iter().filter(|b| !b.is_empty()).collect();
        let remaining = frames.iter().map(|b| b.len() as u64).sum();
        Frames { frames, remaining }
    }
}

impl http_body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = this.frames.pop_front().map(|b| {
            this.remaining -= b.len() as u64;
            Ok(http_body::Frame::data(b))
        });
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// Reserves an inference request's bytes against the in-flight budget as its body arrives
/// (after decompression), chunk by chunk: a declared length is not reserved up front, so a
/// client that announces a large body and sends nothing holds nothing (a declared length over
/// `max_request_bytes` is refused with 413 before this). The handler adds what decoding, the
/// model and encoding hold; the response body keeps the reservation until it is sent. A body
/// over the budget fails as it is read, and the handler answers 503 in its API's error shape.
pub(crate) async fn hold_budget(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let reservation = state.budget.reservation();
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(reservation.clone());
    let body = CountedBody::new(body, reservation.clone(), |e| Box::new(e));
    let request = Request::from_parts(parts, axum::body::Body::new(body));
    next.run(request)
        .await
        .map(|body| axum::body::Body::new(HeldBody::new(body, reservation)))
}

/// What a REST call needs under `[auth]`, and the model it names in its path (checked against
/// the token's models here, before any lookup, so that a refusal says nothing about whether the
/// model exists). Embedding routes name their model in the body: their handlers check it.
fn rest_need(path: &str) -> (Need, Option<Cow<'_, str>>) {
    let (need, model) = rest_need_raw(path);
    // The handlers see the segment percent-decoded (axum's Path), so the check must too.
    (
        need,
        model.map(|m| percent_encoding::percent_decode_str(m).decode_utf8_lossy()),
    )
}

fn rest_need_raw(path: &str) -> (Need, Option<&str>) {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    if crate::listen::is_rest_probe(path) {
        return (Need::Health, None);
    }
    match path {
        "/metrics" => return (Need::Scope(Scope::Metrics), None),
        "/v1/embeddings" | "/embed" | "/tokenize" => return (Need::Scope(Scope::Infer), None),
        "/v2/models/stats" => return (Need::Scope(Scope::Read), None),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/v2/repository/") {
        let model = rest
            .strip_prefix("models/")
            .and_then(|m| m.split('/').next());
        return (Need::Scope(Scope::Admin), model);
    }
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        let model = rest.split('/').next();
        let scope = if rest.ends_with("/infer") {
            Scope::Infer
        } else {
            Scope::Read
        };
        return (Need::Scope(scope), model);
    }
    if let Some(model) = path.strip_prefix("/v1/models/") {
        // `name:version`, as the embedding routes take it.
        let name = match model.rsplit_once(':') {
            Some((name, version))
                if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => model,
        };
        return (Need::Scope(Scope::Read), Some(name));
    }
    // Server metadata, /v1/models, /info, and paths that do not exist (a valid token is
    // needed to learn which do).
    (Need::Scope(Scope::Read), None)
}

/// `max_concurrent_requests` for the REST API, after access control (a caller without a
/// valid token holds no slot): over it, 429 at once. The caller wraps the response body in
/// [`crate::listen::GuardedBody`] with the guard, which holds the slot, and marks the
/// connection busy, until the body has been sent. Probes and `/metrics` are not counted.
pub(crate) fn admit(
    state: &AppState,
    request: &Request,
) -> Result<crate::listen::RequestGuard, Box<Response>> {
    let counted = !crate::listen::rest_uncounted(request.uri().path());
    let peer = request.extensions().get::<crate::listen::Peer>();
    state
        .listening
        .requests
        .admit(peer, counted)
        .ok_or_else(|| Box::new(crate::listen::too_many_requests(&state.listening)))
}

/// A REST call as a refusal's log line names it: `POST /v2/models/m/infer`.
struct RestCall<'a>(&'a axum::http::Method, &'a str);

impl std::fmt::Display for RestCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// `[auth]` for the REST API: refuses a call without a token (401) or whose token lacks the
/// scope or the model in the path (403), before anything of the body is read; an allowed call
/// carries the token's [`Grant`] and its name as the caller's identity.
pub(crate) fn authorize(state: &AppState, request: &mut Request) -> Result<(), Box<Response>> {
    let (need, model) = rest_need(request.uri().path());
    let client = Caller::of(request.extensions()).addr;
    // Formatted only when a refusal is logged.
    let what = RestCall(request.method(), request.uri().path());
    let checked = state
        .access
        .check(
            request.headers().get(header::AUTHORIZATION),
            need,
            client,
            &what,
        )
        .and_then(|grant| {
            if let (Some(grant), Some(model)) = (&grant, &model) {
                state
                    .access
                    .check_model(Some(grant), model, client, &what)?;
            }
            Ok(grant)
        });
    match checked {
        Ok(Some(grant)) => {
            request
                .extensions_mut()
                .insert(Identity(grant.name.clone()));
            request.extensions_mut().insert(grant);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(denied) => Err(Box::new(denied.rest_response())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_needs_its_scope_and_names_its_model() {
        let read = Need::Scope(Scope::Read);
        for (path, need, model) in [
            ("/v2/health/live", Need::Health, None),
            ("/v2/health/ready", Need::Health, None),
            ("/v2", read, None),
            ("/v2/", read, None),
            ("/v2/models/m", read, Some("m")),
            ("/v2/models/m/ready", read, Some("m")),
            ("/v2/models/m/versions/2/config", read, Some("m")),
            ("/v2/models/m/stats", read, Some("m")),
            ("/v2/models/stats", read, None),
            ("/v2/models/m/infer", Need::Scope(Scope::Infer), Some("m")),
            (
                "/v2/models/m/versions/1/infer",
                Need::Scope(Scope::Infer),
                Some("m"),
            ),
            ("/v2/repository/index", Need::Scope(Scope::Admin), None),
            (
                "/v2/repository/models/m/load",
                Need::Scope(Scope::Admin),
                Some("m"),
            ),
            ("/metrics", Need::Scope(Scope::Metrics), None),
            ("/v1/embeddings", Need::Scope(Scope::Infer), None),
            ("/embed", Need::Scope(Scope::Infer), None),
            ("/v1/models", read, None),
            ("/v1/models/e", read, Some("e")),
            ("/v1/models/e:2", read, Some("e")),
            (
                "/v2/models/my%20model/infer",
                Need::Scope(Scope::Infer),
                Some("my model"),
            ),
            ("/v2/models/x%41/ready", read, Some("xA")),
            ("/info", read, None),
            ("/nowhere", read, None),
        ] {
            let (got, name) = rest_need(path);
            assert_eq!((got, name.as_deref()), (need, model), "{path}");
        }
    }
}
