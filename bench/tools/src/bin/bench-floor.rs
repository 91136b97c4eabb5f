//! The floor: `POST /v2/models/{model}/infer` with two FP32 inputs of equal shape, answered with
//! their element-wise sum, through serde_json and axum and nothing else (no model, no
//! validation beyond what the sum needs, no metrics, no logging).
//!
//! `bench-floor 127.0.0.1:8280`

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::post;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    name: String,
    shape: Vec<usize>,
    datatype: String,
    data: Vec<f32>,
}

#[derive(Deserialize)]
struct Request {
    id: Option<String>,
    inputs: Vec<Input>,
}

#[derive(Serialize)]
struct Output {
    name: &'static str,
    shape: Vec<usize>,
    datatype: &'static str,
    data: Vec<f32>,
}

#[derive(Serialize)]
struct Response {
    model_name: String,
    id: Option<String>,
    outputs: Vec<Output>,
}

async fn infer(
    Path(model): Path<String>,
    Json(request): Json<Request>,
) -> Result<Json<Response>, (StatusCode, String)> {
    let [a, b] = &request.inputs[..] else {
        return Err((StatusCode::BAD_REQUEST, "expected two inputs".into()));
    };
    if a.data.len() != b.data.len() || a.datatype != "FP32" || b.datatype != "FP32" {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("'{}' and '{}' must be FP32 of one shape", a.name, b.name),
        ));
    }
    let data = a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect();
    Ok(Json(Response {
        model_name: model,
        id: request.id,
        outputs: vec![Output {
            name: "OUTPUT0",
            shape: a.shape.clone(),
            datatype: "FP32",
            data,
        }],
    }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8280".into());
    let app = axum::Router::new().route("/v2/models/{model}/infer", post(infer));
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("floor listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
