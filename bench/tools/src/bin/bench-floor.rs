//! The floors: what the same protocol stacks cost with nothing of a model server in them.
//!
//! REST (axum + serde_json), on the first address:
//! - `POST /v2/models/{model}/infer`: two FP32 inputs of equal shape in the OIP JSON form,
//!   answered with their element-wise sum (no model, no validation beyond what the sum needs,
//!   no metrics, no logging);
//! - `POST /echo`: the request body read whole and returned as the response body (the floor
//!   for big bodies).
//!
//! gRPC (tonic + prost, nothing else), on the second address when given:
//! `inference.GRPCInferenceService/ModelInfer` decodes the `ModelInferRequest` and answers: for
//! two FP32 inputs of one length in `raw_input_contents`, their sum as `OUTPUT0`; otherwise
//! every input returned as an output of the same name, shape and bytes (the echo floor). The
//! HTTP/2 settings are oxinfer's defaults (16 MiB stream and 32 MiB connection windows,
//! `TCP_NODELAY`), so that the comparison is of the work, not of flow control.
//!
//! With `--work-ns N` (after the addresses), the gRPC `ModelInfer` handler also spins for N
//! nanoseconds of user-space work per request before it answers: the floor made to spend what a
//! server's own code spends, to see what that costs on the same stack (`bench/run.py`'s
//! "calibrated floor").
//!
//! `bench-floor 127.0.0.1:8280 [127.0.0.1:8281] [--work-ns N]`

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::StatusCode;
use axum::routing::post;
use oxinfer_server::pb;
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

/// The body, read whole, returned as it came.
async fn echo(body: Bytes) -> ([(&'static str, &'static str); 1], Bytes) {
    ([("content-type", "application/octet-stream")], body)
}

/// Nanoseconds of busy work per gRPC `ModelInfer` (`--work-ns`; 0: none).
static WORK_NS: AtomicU64 = AtomicU64::new(0);

/// Spins on the clock for `WORK_NS`: user-space time, no system call, no allocation.
fn busy_work() {
    let work = Duration::from_nanos(WORK_NS.load(Ordering::Relaxed));
    if work.is_zero() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < work {
        std::hint::spin_loop();
    }
}

/// The gRPC floor's `ModelInfer`: the sum of two FP32 inputs, or every input echoed.
fn model_infer(request: pb::ModelInferRequest) -> Result<pb::ModelInferResponse, tonic::Status> {
    use pb::model_infer_response::InferOutputTensor;
    busy_work();
    let raw = &request.raw_input_contents;
    if raw.len() != request.inputs.len() {
        return Err(tonic::Status::invalid_argument(
            "every input must be in raw_input_contents",
        ));
    }
    let sum = request.inputs.len() == 2
        && request.inputs.iter().all(|i| i.datatype == "FP32")
        && raw[0].len() == raw[1].len()
        && raw[0].len().is_multiple_of(4);
    let (outputs, raw_output_contents) = if sum {
        let floats = |b: &[u8]| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>()
        };
        let out: Vec<u8> = floats(&raw[0])
            .iter()
            .zip(floats(&raw[1]))
            .flat_map(|(a, b)| (a + b).to_le_bytes())
            .collect();
        let output = InferOutputTensor {
            name: "OUTPUT0".into(),
            datatype: "FP32".into(),
            shape: request.inputs[0].shape.clone(),
            ..Default::default()
        };
        (vec![output], vec![Bytes::from(out)])
    } else {
        let outputs = request
            .inputs
            .iter()
            .map(|i| InferOutputTensor {
                name: i.name.clone(),
                datatype: i.datatype.clone(),
                shape: i.shape.clone(),
                ..Default::default()
            })
            .collect();
        (outputs, raw.clone())
    };
    Ok(pb::ModelInferResponse {
        model_name: request.model_name,
        model_version: request.model_version,
        id: request.id,
        outputs,
        raw_output_contents,
        ..Default::default()
    })
}

struct ModelInfer;

impl tonic::server::UnaryService<pb::ModelInferRequest> for ModelInfer {
    type Response = pb::ModelInferResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<pb::ModelInferRequest>) -> Self::Future {
        std::future::ready(model_infer(request.into_inner()).map(tonic::Response::new))
    }
}

/// The whole gRPC service: one method, everything else `UNIMPLEMENTED`.
#[derive(Clone)]
struct GrpcFloor;

impl tonic::server::NamedService for GrpcFloor {
    const NAME: &'static str = "inference.GRPCInferenceService";
}

impl tower::Service<axum::http::Request<tonic::body::Body>> for GrpcFloor {
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != "/inference.GRPCInferenceService/ModelInfer" {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("the floor serves ModelInfer only").into_http())
            });
        }
        Box::pin(async move {
            let codec =
                tonic_prost::ProstCodec::<pb::ModelInferResponse, pb::ModelInferRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            Ok(grpc.unary(ModelInfer, request).await)
        })
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--work-ns") {
        let work = args
            .get(at + 1)
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| std::io::Error::other("--work-ns takes a number of nanoseconds"))?;
        WORK_NS.store(work, Ordering::Relaxed);
        args.drain(at..at + 2);
    }
    let mut args = args.into_iter();
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8280".into());
    let grpc_address = args.next();
    let app = axum::Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .route("/echo", post(echo))
        .layer(DefaultBodyLimit::disable());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("floor listening on {}", listener.local_addr()?);
    if let Some(grpc_address) = grpc_address {
        let grpc = tokio::net::TcpListener::bind(&grpc_address).await?;
        eprintln!("gRPC floor listening on {}", grpc.local_addr()?);
        let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .initial_stream_window_size(16 * 1024 * 1024)
                .initial_connection_window_size(32 * 1024 * 1024)
                .add_service(GrpcFloor)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                eprintln!("gRPC floor: {e}");
                std::process::exit(1);
            }
        });
    }
    axum::serve(listener, app).await
}
