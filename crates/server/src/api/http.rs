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
