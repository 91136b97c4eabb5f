//! A closed-loop gRPC load generator for KServe v2 `ModelInfer`: `connections` HTTP/2
//! connections, each sending the next request as soon as the previous answer arrives, for
//! `seconds`. Prints one JSON line: requests/s, p50/p99/mean latency in microseconds, errors.
//!
//! `grpc-load ADDRESS MODEL REQUEST.json CONNECTIONS SECONDS [THREADS]`
//!
//! REQUEST.json holds the inputs as in the REST JSON form (`{"inputs": [{name, datatype, shape,
//! data}]}`, FP32 / INT64 / INT32 data); they are sent as `raw_input_contents`, which is what
//! tritonclient sends. THREADS (default 1) is the number of client threads, like `wrk -t`.

use std::time::{Duration, Instant};

use oxinfer_server::pb;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use serde::Deserialize;

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    data: Vec<f64>,
}

#[derive(Deserialize)]
struct JsonRequest {
    inputs: Vec<JsonInput>,
}

fn request(model: &str, json: &JsonRequest) -> pb::ModelInferRequest {
    let mut raw = Vec::new();
    let inputs = json
        .inputs
        .iter()
        .map(|i| {
            let mut bytes = Vec::new();
            for v in &i.data {
                match i.datatype.as_str() {
                    "FP32" => bytes.extend_from_slice(&(*v as f32).to_le_bytes()),
                    "INT64" => bytes.extend_from_slice(&(*v as i64).to_le_bytes()),
                    "INT32" => bytes.extend_from_slice(&(*v as i32).to_le_bytes()),
                    other => panic!("grpc-load: datatype {other} is not supported"),
                }
            }
            raw.push(bytes.into());
            pb::model_infer_request::InferInputTensor {
                name: i.name.clone(),
                datatype: i.datatype.clone(),
                shape: i.shape.clone(),
                ..Default::default()
            }
        })
        .collect();
    pb::ModelInferRequest {
        model_name: model.to_string(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: grpc-load ADDRESS MODEL REQUEST.json CONNECTIONS SECONDS [THREADS]");
        std::process::exit(2);
    }
    let address = format!("http://{}", args[1]);
    let text = std::fs::read_to_string(&args[3]).expect("request file");
    let json: JsonRequest = serde_json::from_str(&text).expect("request JSON");
    let message = request(&args[2], &json);
    let connections: usize = args[4].parse().expect("connections");
    let seconds: f64 = args[5].parse().expect("seconds");
    let threads: usize = args.get(6).map_or(1, |t| t.parse().expect("threads"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime");
    let (latencies, errors, elapsed) = runtime.block_on(async move {
        let mut clients = Vec::new();
        for _ in 0..connections {
            let channel = tonic::transport::Endpoint::from_shared(address.clone())
                .expect("address")
                .connect()
                .await
                .expect("connect");
            clients.push(
                GrpcInferenceServiceClient::new(channel).max_decoding_message_size(usize::MAX),
            );
        }
        // Warm-up: one request per connection.
        for c in &mut clients {
            c.model_infer(message.clone())
                .await
                .expect("warm-up request");
        }
        let started = Instant::now();
        let end = started + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let message = message.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(100_000);
                    let mut errors = 0u64;
                    while Instant::now() < end {
                        let t = Instant::now();
                        match c.model_infer(message.clone()).await {
                            Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (lat, e) = t.await.expect("task");
            all.extend(lat);
            errors += e;
        }
        (all, errors, started.elapsed())
    });
    let mut latencies = latencies;
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let mean = latencies.iter().sum::<u64>() as f64 / latencies.len().max(1) as f64;
    println!(
        "{{\"requests\": {}, \"errors\": {errors}, \"rps\": {:.1}, \"p50_us\": {}, \"p99_us\": {}, \"mean_us\": {mean:.1}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    );
}
