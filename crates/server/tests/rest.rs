//! REST handler tests: the real router over the tract runtime and the example models, driven
//! through `tower::ServiceExt::oneshot` without opening a socket.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use oxinfer_core::Manifest;
use oxinfer_server::{AppState, ModelRepository, RuntimeRegistry, app};
use serde_json::{Value, json};
use tower::ServiceExt;

const LIMIT: usize = 64 * 1024;

fn state() -> AppState {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/oxinfer.toml");
    let manifest = Manifest::load(&path).unwrap();
    let mut registry = RuntimeRegistry::new();
    registry.register(Arc::new(oxinfer_tract::TractRuntime));
    AppState::new(ModelRepository::load(registry, manifest).unwrap(), LIMIT)
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

async fn call(state: &AppState, method: Method, uri: &str, body: impl Into<Body>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body.into())
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{uri}: body is not JSON ({e}): {bytes:?}"));
    Reply {
        status,
        content_type,
        body,
    }
}

async fn get(state: &AppState, uri: &str) -> Reply {
    call(state, Method::GET, uri, Body::empty()).await
}

async fn post(state: &AppState, uri: &str, body: impl Into<Body>) -> Reply {
    call(state, Method::POST, uri, body).await
}

/// Asserts a 4xx/5xx JSON error whose message contains `needle`.
fn assert_error(reply: &Reply, status: u16, needle: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
    assert_eq!(reply.content_type, "application/json");
    let msg = reply.body["error"].as_str().expect("an error message");
    assert!(msg.contains(needle), "'{msg}' should contain '{needle}'");
}

fn simple_request(a: &[i32], b: &[i32]) -> Value {
    json!({"id": "req-7", "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b},
    ]})
}

#[tokio::test]
async fn server_endpoints() {
    let s = state();
    for uri in ["/v2", "/v2/"] {
        let r = get(&s, uri).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["name"], "oxinfer");
        assert!(r.body["version"].is_string());
        assert!(r.body["extensions"].is_array());
    }
    assert_eq!(get(&s, "/v2/health/live").await.body, json!({"live": true}));
    assert_eq!(
        get(&s, "/v2/health/ready").await.body,
        json!({"ready": true})
    );
    s.set_not_ready();
    assert_error(&get(&s, "/v2/health/ready").await, 503, "shutting down");
    assert_error(&get(&s, "/v2/models/simple/ready").await, 503, "not ready");
}

#[tokio::test]
async fn model_metadata_and_readiness_with_and_without_version() {
    let s = state();
    let r = get(&s, "/v2/models/simple").await;
    assert_eq!(r.status, StatusCode::OK);
    // What `sha256sum examples/models/simple.onnx` prints.
    let sha256 = {
        use sha2::Digest;
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/models/simple.onnx");
        hex::encode(sha2::Sha256::digest(std::fs::read(file).unwrap()))
    };
    assert_eq!(
        r.body,
        json!({"name": "simple", "versions": ["1"], "platform": "onnx_tract",
            "parameters": {"sha256": sha256},
            "inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
                       {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]}],
            "outputs": [{"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
                        {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]}]})
    );
    assert_eq!(get(&s, "/v2/models/simple/versions/1").await.body, r.body);
    assert_eq!(
        get(&s, "/v2/models/mlp").await.body["versions"],
        json!(["1", "2"])
    );
    assert_eq!(
        get(&s, "/v2/models/mlp/versions/2/ready").await.body,
        json!({"name": "mlp", "ready": true})
    );
    assert_eq!(get(&s, "/v2/models/mlp/ready").await.status, StatusCode::OK);
    assert_error(
        &get(&s, "/v2/models/nope").await,
        404,
        "unknown model 'nope'",
    );
    assert_error(
        &get(&s, "/v2/models/nope/ready").await,
        404,
        "unknown model",
    );
    assert_error(
        &get(&s, "/v2/models/mlp/versions/3").await,
        404,
        "unknown version '3' of model 'mlp' (versions: 1, 2)",
    );
    assert_error(
        &get(&s, "/v2/models/mlp/versions/x/ready").await,
        404,
        "unknown version 'x'",
    );
    // Percent-encoded names are decoded (the Python client quotes them).
    assert_eq!(get(&s, "/v2/models/%73imple").await.status, StatusCode::OK);
    assert_error(&get(&s, "/v3").await, 404, "no such endpoint: GET /v3");
    assert_error(&post(&s, "/v2/health/live", "").await, 405, "not allowed");
}

#[tokio::test]
async fn infer_simple_echoes_id_and_names_the_version() {
    let s = state();
    let a: Vec<i32> = (0..16).collect();
    let b: Vec<i32> = (0..16).map(|x| 100 - x).collect();
    for uri in [
        "/v2/models/simple/infer",
        "/v2/models/simple/versions/1/infer",
    ] {
        let r = post(&s, uri, simple_request(&a, &b).to_string()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.body["id"], "req-7");
        assert_eq!(r.body["model_name"], "simple");
        assert_eq!(r.body["model_version"], "1");
        let sum: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let diff: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        assert_eq!(
            r.body["outputs"],
            json!([{"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16], "data": sum},
                   {"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16], "data": diff}])
        );
    }
}

#[tokio::test]
async fn requested_outputs_are_honoured_and_versions_differ() {
    let s = state();
    let body = json!({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
        "data": [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]]}],
        "outputs": [{"name": "probs"}]})
    .to_string();
    let v1 = post(&s, "/v2/models/mlp/versions/1/infer", body.clone()).await;
    let latest = post(&s, "/v2/models/mlp/infer", body.clone()).await;
    assert_eq!(latest.body["model_version"], "2");
    let outputs = v1.body["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0]["name"], "probs");
    assert_eq!(outputs[0]["shape"], json!([2, 3]));
    let probs: Vec<f64> = serde_json::from_value(outputs[0]["data"].clone()).unwrap();
    for row in probs.chunks(3) {
        assert!(
            (row.iter().sum::<f64>() - 1.0).abs() < 1e-5,
            "softmax rows sum to 1: {row:?}"
        );
    }
    assert_ne!(
        v1.body["outputs"], latest.body["outputs"],
        "v1 and v2 have different weights"
    );
    let r = post(&s, "/v2/models/mlp/infer", body.replace("probs", "nope")).await;
    assert_error(&r, 400, "has no output 'nope' (outputs: 'logits', 'probs')");
}

#[tokio::test]
async fn every_datatype_round_trips_through_json() {
    let s = state();
    let cases = [
        ("BOOL", json!([true, false]), json!([false, true])),
        ("UINT8", json!([0, 255]), json!([0, 255])),
        ("UINT16", json!([0, 65535]), json!([0, 65535])),
        (
            "UINT32",
            json!([0, 4294967295u64]),
            json!([0, 4294967295u64]),
        ),
        ("UINT64", json!([0, u64::MAX]), json!([0, u64::MAX])),
        ("INT8", json!([-128, 127]), json!([-128, 127])),
        ("INT16", json!([-32768, 32767]), json!([-32768, 32767])),
        ("INT32", json!([-5, 2147483646]), json!([-4, 2147483647])),
        (
            "INT64",
            json!([i64::MIN, i64::MAX]),
            json!([i64::MIN, i64::MAX]),
        ),
        ("FP16", json!([1.5, -0.25]), json!([1.5, -0.25])),
        ("FP32", json!([1.5, -0.25]), json!([1.5, -0.25])),
        ("FP64", json!([1e300, -0.5]), json!([2e300, -1.0])),
        ("BYTES", json!(["héllo", ""]), json!(["héllo", ""])),
    ];
    let inputs: Vec<Value> = cases
        .iter()
        .map(|(dt, data, _)| json!({"name": format!("in_{dt}"), "shape": [1, 2], "datatype": dt, "data": data}))
        .collect();
    let r = post(
        &s,
        "/v2/models/dtypes/infer",
        json!({"inputs": inputs}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for (output, (dt, _, expected)) in r.body["outputs"].as_array().unwrap().iter().zip(&cases) {
        assert_eq!(output["name"], format!("out_{dt}"));
        assert_eq!(output["datatype"], *dt);
        assert_eq!(output["shape"], json!([1, 2]));
        assert_eq!(output["data"], *expected, "{dt}");
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_the_server_keeps_serving() {
    let s = state();
    let uri = "/v2/models/simple/infer";
    let ones = [1; 16];
    let with_input0 = |input0: Value| {
        json!({"inputs": [input0, {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": ones}]})
            .to_string()
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"inputs\": [".into(), 400, "malformed inference request"),
        ("[1, 2]".into(), 400, "malformed inference request"),
        ("".into(), 400, "request body is empty"),
        ("{}".into(), 400, "missing field `inputs`"),
        (with_input0(json!({"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": ones})), 400,
            "datatype FP32 does not match the model's INT32"),
        (with_input0(json!({"name": "INPUT0", "shape": [1, 16], "datatype": "INT33", "data": ones})), 400,
            "unknown datatype 'INT33'"),
        // The shape is checked against the model before the data is decoded.
        (with_input0(json!({"name": "INPUT0", "shape": [1, 15], "datatype": "INT32", "data": ones})), 400,
            "shape [1, 15] does not match the model's [-1, 16]"),
        (with_input0(json!({"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 17]})), 400,
            "more elements than the shape's 16"),
        (with_input0(json!({"name": "INPUT0", "shape": [2, 16], "datatype": "INT32", "data": ones})), 400,
            "needs 32 elements but 'data' has 16"),
        (with_input0(json!({"name": "INPUT0", "shape": [16], "datatype": "INT32", "data": ones})), 400,
            "shape [16] does not match the model's [-1, 16]"),
        (with_input0(json!({"name": "INPUT0", "shape": [1, 8], "datatype": "INT32", "data": vec![1; 8]})), 400,
            "shape [1, 8] does not match the model's [-1, 16]"),
        (with_input0(json!({"name": "INPUT0", "shape": [-1, 16], "datatype": "INT32", "data": ones})), 400,
            "negative dimension"),
        (with_input0(json!({"name": "INPUT0", "shape": [9223372036854775807i64, 16], "datatype": "INT32", "data": ones})), 400,
            "too large"),
        // An absurd batch is refused by the model's limits before any data is decoded...
        (with_input0(json!({"name": "INPUT0", "shape": [1000000000, 16], "datatype": "INT32", "data": ones})), 400,
            "1000000000 rows (first dimension) is over the model's limit of 1048576"),
        // ...and a large one within them finds too little data without allocating for it.
        (with_input0(json!({"name": "INPUT0", "shape": [65536, 16], "datatype": "INT32", "data": ones})), 400,
            "needs 1048576 elements but 'data' has 16"),
        (with_input0(json!({"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": vec!["1"; 16]})), 400,
            "\"1\" is not a valid INT32 integer"),
        (with_input0(json!({"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": vec![1.5; 16]})), 400,
            "1.5 is not a valid INT32 integer"),
        (with_input0(json!({"name": "INPUT0", "shape": [1, 16], "datatype": "INT32"})), 400, "has no 'data'"),
        (json!({"inputs": [{"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": ones}]}).to_string(), 400,
            "missing input 'INPUT0'"),
        (with_input0(json!({"name": "EXTRA", "shape": [1], "datatype": "INT32", "data": [1]})), 400,
            "model 'simple' has no input 'EXTRA'"),
        (simple_request(&ones, &ones).to_string().replacen("[1,1,1,1", "[NaN,1,1,1", 1), 400,
            "JSON has no NaN or Infinity"),
        (simple_request(&ones, &ones).to_string().replacen("[1,1,1,1", "[Infinity,1,1,1", 1), 400,
            "JSON has no NaN or Infinity"),
        (" ".repeat(LIMIT + 1), 413, "larger than the limit of 65536 bytes"),
    ];
    for (body, status, needle) in &cases {
        let r = post(&s, uri, body.clone()).await;
        assert_error(&r, *status, needle);
        // The same state still serves a good request after each bad one.
        let ok = post(&s, uri, simple_request(&ones, &ones).to_string()).await;
        assert_eq!(ok.status, StatusCode::OK);
    }
    // Deep nesting is refused without exhausting the stack.
    for depth in [200, 30_000] {
        let deep = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let body = simple_request(&ones, &ones).to_string().replacen(
            &serde_json::to_string(&ones).unwrap(),
            &deep,
            1,
        );
        assert_error(&post(&s, uri, body).await, 400, "INPUT0");
    }
    assert_error(
        &post(&s, "/v2/models/nope/infer", "{}").await,
        404,
        "unknown model 'nope'",
    );
    assert_error(
        &post(&s, "/v2/models/simple/versions/9/infer", "{}").await,
        404,
        "unknown version '9'",
    );
}

/// `GET /metrics` as text.
async fn metrics_text(state: &AppState) -> String {
    let request = Request::get("/metrics").body(Body::empty()).unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn metrics_show_the_models_ready_now_and_the_process() {
    let s = state();
    assert_eq!(
        post(
            &s,
            "/v2/models/simple/infer",
            simple_request(&[1; 16], &[2; 16]).to_string()
        )
        .await
        .status,
        StatusCode::OK
    );
    let text = metrics_text(&s).await;
    for line in [
        "# TYPE oxinfer_requests_total counter",
        "oxinfer_requests_total{model=\"simple\",outcome=\"success\",protocol=\"http\",version=\"1\"} 1",
        "oxinfer_batch_size_bucket{model=\"simple\",version=\"1\",le=\"1\"} 1",
        "oxinfer_models_loaded 4",
        "# TYPE process_cpu_seconds_total counter",
        "# TYPE process_open_fds gauge",
        "# TYPE oxinfer_process_resident_memory_bytes gauge",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    // Statistics count the same request the metrics do.
    let stats = get(&s, "/v2/models/simple/stats").await.body;
    assert_eq!(
        stats["model_stats"][0]["inference_stats"]["success"]["count"],
        1
    );
    // An unloaded model's series disappear; a reloaded one starts again from zero.
    assert_eq!(
        post(&s, "/v2/repository/models/simple/unload", "")
            .await
            .status,
        StatusCode::OK
    );
    let text = metrics_text(&s).await;
    assert!(!text.contains("model=\"simple\""), "{text}");
    assert!(text.contains("oxinfer_models_loaded 3"), "{text}");
    assert_eq!(
        post(&s, "/v2/repository/models/simple/load", "")
            .await
            .status,
        StatusCode::OK
    );
    let text = metrics_text(&s).await;
    assert!(
        text.contains(
            "oxinfer_requests_total{model=\"simple\",outcome=\"success\",protocol=\"http\",version=\"1\"} 0"
        ),
        "{text}"
    );
}

/// The compression layers apply exactly when the request asks for them: a body sent gzipped is
/// read, an answer is gzipped for a client that accepts it, and a client that names no
/// encoding (or only `identity`) gets the plain answer.
#[tokio::test]
async fn compression_applies_only_when_the_request_asks_for_it() {
    use std::io::{Read, Write};
    let s = state();
    let a: Vec<i32> = (0..16).collect();
    let body = simple_request(&a, &a).to_string();
    let send = |headers: &'static [(&'static str, &'static str)], body: Vec<u8>| {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/v2/models/simple/infer");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        app(s.clone()).oneshot(request.body(Body::from(body)).unwrap())
    };
    let doubled: Vec<i32> = a.iter().map(|x| 2 * x).collect();
    let check = |bytes: &[u8]| {
        let reply: Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(reply["outputs"][0]["data"], json!(doubled));
    };

    for headers in [&[][..], &[("accept-encoding", "identity")][..]] {
        let response = send(headers, body.clone().into_bytes()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("content-encoding").is_none());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        check(&bytes);
    }

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let packed = gz.finish().unwrap();
    // A gzipped body, answered plainly.
    let response = send(&[("content-encoding", "gzip")], packed.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("content-encoding").is_none());
    check(&response.into_body().collect().await.unwrap().to_bytes());
    // A gzipped body and a gzipped answer.
    let response = send(
        &[("content-encoding", "gzip"), ("accept-encoding", "gzip")],
        packed,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["vary"], "accept-encoding");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut plain)
        .unwrap();
    check(&plain);
    // An encoding the server does not know: refused before the handler.
    let response = send(&[("content-encoding", "compress")], body.into_bytes())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// The body limit (`max_request_bytes`) holds on the decompressed body of every route that
/// reads one: a small gzip body that inflates past it is refused with 413, on the inference
/// route (which reads its body itself) and on the repository's (axum's limit), and the server
/// goes on answering.
#[tokio::test]
async fn a_gzipped_body_that_inflates_past_the_limit_is_refused() {
    use std::io::Write;
    let s = state();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 4 * LIMIT]).unwrap();
    let packed = gz.finish().unwrap();
    assert!(packed.len() < LIMIT / 10, "a small body on the wire");
    for uri in ["/v2/models/simple/infer", "/v2/repository/index"] {
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(Body::from(packed.clone()))
            .unwrap();
        let response = app(s.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
    }
    let a: Vec<i32> = (0..16).collect();
    let reply = post(
        &s,
        "/v2/models/simple/infer",
        simple_request(&a, &a).to_string(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// Every route answers a method it does not take with the same JSON 405, the inference route
/// (built apart from the others) included.
#[tokio::test]
async fn methods_a_route_does_not_take_get_a_json_405() {
    let s = state();
    for uri in [
        "/v2/models/simple/infer",
        "/v2/models/simple/versions/1/infer",
        "/v2/models/simple/ready",
        "/v2/health/live",
    ] {
        for method in [Method::GET, Method::TRACE, Method::DELETE, Method::PUT] {
            if method == Method::GET && !uri.ends_with("/infer") {
                continue;
            }
            let reply = call(&s, method.clone(), uri, Body::empty()).await;
            assert_error(&reply, 405, "not allowed");
        }
    }
}

/// The inference route is called straight from the front door when its path needs no decoding,
/// and through the router otherwise (a percent-encoded segment): both answer the same, status,
/// headers and body, and the direct call's answer has its `Content-Length` as the router's does.
#[tokio::test]
async fn the_inference_route_answers_the_same_called_directly_or_through_the_router() {
    let s = state();
    let a: Vec<i32> = (0..16).collect();
    let body = simple_request(&a, &a).to_string();
    let answer = |uri: &'static str| {
        let s = s.clone();
        let body = body.clone();
        async move {
            let request = Request::post(uri).body(Body::from(body)).unwrap();
            let response = app(s).oneshot(request).await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, headers, bytes)
        }
    };
    for (direct, routed, status) in [
        ("/v2/models/simple/infer", "/v2/models/%73imple/infer", 200),
        (
            "/v2/models/simple/versions/1/infer",
            "/v2/models/simple/versions/%31/infer",
            200,
        ),
        ("/v2/models/nope/infer", "/v2/models/n%6Fpe/infer", 404),
        (
            "/v2/models/simple/versions/9/infer",
            "/v2/models/simple/versions/%39/infer",
            404,
        ),
    ] {
        let (direct_status, direct_headers, direct_body) = answer(direct).await;
        let (routed_status, routed_headers, routed_body) = answer(routed).await;
        assert_eq!(direct_status.as_u16(), status, "{direct}: {direct_body:?}");
        assert_eq!(routed_status, direct_status, "{routed}");
        assert_eq!(routed_body, direct_body, "{routed}");
        for name in ["content-type", "content-length", "x-request-id"] {
            assert_eq!(
                direct_headers.get(name),
                routed_headers.get(name),
                "{direct}: {name}"
            );
        }
        assert_eq!(
            direct_headers["content-length"],
            direct_body.len().to_string().as_str()
        );
    }
}
