//! What the HTTP routes share (OIP's REST API and the embedding APIs): JSON responses and the
//! in-flight budget middleware.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::budget::{CountedBody, HeldBody};
use crate::state::AppState;

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

/// Reserves an inference request's bytes against the in-flight budget: its declared length
/// before any of the body is read (when it is not compressed), then each decompressed chunk as
/// it arrives; the handler adds what decoding, the model and encoding hold; the response body
/// keeps the reservation until it is sent. A body over the budget fails as it is read, and the
/// handler answers 503 in its API's error shape.
pub(crate) async fn hold_budget(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let reservation = state.budget.reservation();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .filter(|_| !request.headers().contains_key(header::CONTENT_ENCODING))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    // Reserved up front when it fits; otherwise the first chunk over the budget fails.
    let prepaid = if reservation.grow(declared).is_ok() {
        declared
    } else {
        0
    };
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(reservation.clone());
    let body = CountedBody::new(body, reservation.clone(), prepaid, |e| Box::new(e));
    let request = Request::from_parts(parts, axum::body::Body::new(body));
    next.run(request)
        .await
        .map(|body| axum::body::Body::new(HeldBody::new(body, reservation)))
}
