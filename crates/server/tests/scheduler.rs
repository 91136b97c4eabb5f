//! Scheduler tests through the real router: dynamic batching returns each request exactly its
//! own outputs (and never mixes shapes), a full queue refuses at once, an expired deadline is
//! an error without execution, and a request whose client disconnected is not executed.
//!
//! The model is a probe runtime defined here: `y = 2 * x` on FP32 `[-1, -1]`, sleeping
//! `sleep_ms` per execution, recording the shape of every execution it runs, and refusing any
//! batch that holds a -1 (a client error).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use oxinfer_core::protocol::TensorMetadata;
use oxinfer_core::{
    DataType, LoadRequest, Manifest, Model, ModelSignature, Result, Runtime, Tensor,
};
use oxinfer_server::{AppState, ModelRepository, RuntimeRegistry, app};
use serde_json::{Value, json};
use tower::ServiceExt;

type Log = Arc<Mutex<Vec<Vec<usize>>>>;

/// Where and how the probe's executions ran.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// The name of the thread of each execution.
    threads: Arc<Mutex<Vec<String>>>,
    /// Executions running now, and the most seen at once.
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

struct ProbeRuntime {
    log: Log,
    seen: Seen,
}

struct Probe {
    signature: ModelSignature,
    sleep: Duration,
    any_thread: bool,
    log: Log,
    seen: Seen,
}

impl Runtime for ProbeRuntime {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn platform(&self) -> &'static str {
        "probe"
    }
    fn load(&self, request: &LoadRequest<'_>) -> Result<Box<dyn Model>> {
        let sleep = request
            .options
            .get("sleep_ms")
            .and_then(|v| v.as_integer())
            .unwrap_or(0);
        Ok(Box::new(Probe {
            signature: ModelSignature {
                inputs: vec![TensorMetadata::new("x", DataType::Fp32, vec![-1, -1])],
                outputs: vec![TensorMetadata::new("y", DataType::Fp32, vec![-1, -1])],
            },
            sleep: Duration::from_millis(sleep as u64),
            any_thread: request
                .options
                .get("any_thread")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            log: self.log.clone(),
            seen: self.seen.clone(),
        }))
    }
}

impl Model for Probe {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }
    fn concurrent(&self) -> bool {
        true
    }
    fn runs_on_any_thread(&self) -> bool {
        self.any_thread
    }
    fn execute(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let now = self.seen.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen.most.fetch_max(now, Ordering::SeqCst);
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.seen.threads.lock().unwrap().push(thread);
        self.log.lock().unwrap().push(inputs[0].shape().to_vec());
        std::thread::sleep(self.sleep);
        self.seen.running.fetch_sub(1, Ordering::SeqCst);
        if inputs[0].as_slice::<f32>()?.contains(&-1.0) {
            return Err(oxinfer_core::Error::invalid("the probe refuses -1"));
        }
        let doubled: Vec<f32> = inputs[0]
            .as_slice::<f32>()?
            .iter()
            .map(|v| v * 2.0)
            .collect();
        Ok(vec![Tensor::from_vec(
            "y",
            inputs[0].shape().to_vec(),
            doubled,
        )?])
    }
}

/// A server state with one probe model configured by `scheduler` (TOML lines) and `options`.
fn state(scheduler: &str, options: &str) -> (AppState, Log) {
    let (state, log, _) = probe_state(scheduler, options);
    (state, log)
}

/// [`state`], with where the executions ran.
fn probe_state(scheduler: &str, options: &str) -> (AppState, Log, Seen) {
    let dir = std::env::temp_dir().join(format!(
        "oxinfer-sched-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("probe.bin"), b"probe").unwrap();
    let manifest = dir.join("m.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[models]]\nname = \"probe\"\nruntime = \"probe\"\npath = \"probe.bin\"\n\
             [models.options]\n{options}\n[models.scheduler]\n{scheduler}\n"
        ),
    )
    .unwrap();
    let (log, seen) = (Log::default(), Seen::default());
    let mut registry = RuntimeRegistry::new();
    registry.register(Arc::new(ProbeRuntime {
        log: log.clone(),
        seen: seen.clone(),
    }));
    let manifest = Manifest::load(&manifest).unwrap();
    (
        AppState::new(ModelRepository::load(registry, manifest).unwrap(), 1 << 20),
        log,
        seen,
    )
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn body(rows: usize, cols: usize, base: f32, timeout_us: Option<u64>) -> Value {
    let data: Vec<f32> = (0..rows * cols).map(|i| base + i as f32).collect();
    let mut b =
        json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, cols], "data": data}]});
    if let Some(t) = timeout_us {
        b["parameters"] = json!({ "timeout": t });
    }
    b
}

async fn infer(state: &AppState, body: &Value) -> (StatusCode, Value) {
    let request = Request::post("/v2/models/probe/infer")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn get(state: &AppState, uri: &str) -> Value {
    let request = Request::get(uri).body(Body::empty()).unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_returns_each_request_exactly_its_own_outputs() {
    let (state, log) = state(
        "instances = 2\nmax_batch_size = 16\nmax_queue_delay_us = 20000\npreferred_batch_sizes = [8]",
        "sleep_ms = 5",
    );
    // 96 concurrent requests: rows 1..=3, and two widths that must never share a batch.
    let mut tasks = Vec::new();
    for i in 0..96usize {
        let state = state.clone();
        let (rows, cols) = (1 + i % 3, if i % 4 == 0 { 8 } else { 4 });
        let base = (i * 1000) as f32;
        tasks.push(tokio::spawn(async move {
            let (status, reply) = infer(&state, &body(rows, cols, base, None)).await;
            assert_eq!(status, StatusCode::OK, "{reply}");
            let out = &reply["outputs"][0];
            assert_eq!(out["shape"], json!([rows, cols]));
            let expected: Vec<f32> = (0..rows * cols).map(|k| 2.0 * (base + k as f32)).collect();
            let got: Vec<f32> = serde_json::from_value(out["data"].clone()).unwrap();
            assert_eq!(got, expected, "request {i} got someone else's outputs");
            rows
        }));
    }
    let mut total_rows = 0;
    for t in tasks {
        total_rows += t.await.unwrap();
    }
    let executions = log.lock().unwrap().clone();
    let executed_rows: usize = executions.iter().map(|s| s[0]).sum();
    assert_eq!(executed_rows, total_rows, "every row executed exactly once");
    assert!(
        executions.iter().all(|s| s[0] <= 16),
        "max_batch_size holds: {executions:?}"
    );
    assert!(
        executions.len() < 96 && executions.iter().any(|s| s[0] > 3),
        "requests were batched: {executions:?}"
    );
    let stats = get(&state, "/v2/models/probe/stats").await;
    let s = &stats["model_stats"][0];
    assert_eq!(s["inference_count"], json!(total_rows));
    assert_eq!(s["execution_count"], json!(executions.len()));
    assert!(s["inference_stats"]["queue"]["ns"].as_u64().unwrap() > 0);
    assert_eq!(s["inference_stats"]["success"]["count"], json!(96));

    let config = get(&state, "/v2/models/probe/config").await;
    assert_eq!(config["max_batch_size"], json!(16));
    assert_eq!(
        config["input"][0]["dims"],
        json!([-1]),
        "batch dim left out"
    );
    assert_eq!(
        config["dynamic_batching"]["max_queue_delay_microseconds"],
        json!(20000)
    );
    assert_eq!(
        config["dynamic_batching"]["preferred_batch_size"],
        json!([8])
    );
    assert_eq!(config["instance_group"][0]["count"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_batching_each_request_runs_alone() {
    let (state, log) = state("instances = 2", "");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            infer(&state, &body(2, 4, i as f32, None)).await.0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let executions = log.lock().unwrap().clone();
    assert_eq!(executions.len(), 20);
    assert!(executions.iter().all(|s| s == &[2, 4]));
    let config = get(&state, "/v2/models/probe/config").await;
    assert_eq!(config["max_batch_size"], json!(0));
    assert_eq!(config["input"][0]["dims"], json!([-1, -1]));
    assert!(config.get("dynamic_batching").is_none());
    assert_eq!(
        config["parameters"]["scheduler.max_queue_size"]["string_value"],
        "1024"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let (state, log) = state("max_queue_size = 2", "sleep_ms = 300");
    let busy = {
        let state = state.clone();
        tokio::spawn(async move { infer(&state, &body(1, 4, 0.0, None)).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // the worker is now busy
    let mut tasks = Vec::new();
    for i in 0..5 {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let (status, reply) = infer(&state, &body(1, 4, i as f32, None)).await;
            (status, reply, started.elapsed())
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, reply, elapsed) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert!(
                    reply["error"].as_str().unwrap().contains("queue is full"),
                    "{reply}"
                );
                assert!(elapsed < Duration::from_millis(150), "refused at once");
            }
            other => panic!("unexpected {other}: {reply}"),
        }
    }
    assert_eq!(busy.await.unwrap(), StatusCode::OK);
    assert_eq!((ok, refused), (2, 3));
    assert_eq!(log.lock().unwrap().len(), 3, "refused requests never run");
    // The server keeps serving once the queue drains.
    assert_eq!(
        infer(&state, &body(1, 4, 0.0, None)).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_is_an_error_and_not_executed() {
    let (state, log) = state("default_timeout_us = 100000", "sleep_ms = 300");
    let busy = {
        let state = state.clone();
        tokio::spawn(async move { infer(&state, &body(1, 4, 0.0, None)).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Its own timeout (50 ms), and the model's default (100 ms): both expire behind `busy`,
    // and are answered at their deadlines, not when `busy` frees the worker (300 ms).
    let timed = |state: AppState, timeout: Option<u64>, value: f32| {
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (status, reply) = infer(&state, &body(1, 4, value, timeout)).await;
            (status, reply, started.elapsed())
        })
    };
    let own = timed(state.clone(), Some(50_000), 1.0);
    let default = timed(state.clone(), None, 2.0);
    // A generous timeout is met.
    let generous = {
        let state = state.clone();
        tokio::spawn(async move { infer(&state, &body(1, 4, 3.0, Some(5_000_000))).await })
    };
    for (task, deadline_ms) in [(own, 50), (default, 100)] {
        let (status, reply, elapsed) = task.await.unwrap();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{reply}");
        assert!(
            elapsed < Duration::from_millis(deadline_ms + 60),
            "answered {elapsed:?} after it was sent, for a {deadline_ms} ms deadline"
        );
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .contains("timeout expired after"),
            "{reply}"
        );
    }
    assert_eq!(busy.await.unwrap(), StatusCode::OK);
    assert_eq!(generous.await.unwrap().0, StatusCode::OK);
    assert_eq!(log.lock().unwrap().len(), 2, "expired requests never run");
    let (status, reply) = infer(
        &state,
        &json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1]}],
                "parameters": {"timeout": "soon"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("parameter 'timeout'")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_disconnected_is_not_executed() {
    let (state, log) = state("", "sleep_ms = 400");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(oxinfer_server::serve_http(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    let raw = |b: &Value| {
        let text = b.to_string();
        format!(
            "POST /v2/models/probe/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{text}",
            text.len()
        )
    };
    let (first, second) = (raw(&body(1, 4, 0.0, None)), raw(&body(1, 4, 9.0, None)));
    let reply = tokio::task::spawn_blocking(move || {
        // The first request occupies the only worker.
        let mut busy = std::net::TcpStream::connect(address).unwrap();
        busy.write_all(first.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // The second is queued behind it, and its client goes away.
        let mut gone = std::net::TcpStream::connect(address).unwrap();
        gone.write_all(second.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(gone);
        let mut reply = vec![0u8; 4096];
        let n = busy.read(&mut reply).unwrap();
        String::from_utf8_lossy(&reply[..n]).to_string()
    })
    .await
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Give the worker time to reach (and drop) the second job.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        log.lock().unwrap().len(),
        1,
        "the disconnected request was dropped, not executed"
    );
    let metrics = {
        let request = Request::get("/metrics").body(Body::empty()).unwrap();
        let response = app(state.clone()).oneshot(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    assert!(
        metrics.contains("oxinfer_scheduler_cancelled_total{model=\"probe\",version=\"1\"} 1"),
        "{metrics}"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_in_a_batch_fails_alone() {
    let (state, log) = state(
        "max_batch_size = 8\nmax_queue_delay_us = 50000\npreferred_batch_sizes = [4]",
        "sleep_ms = 20",
    );
    let mut tasks = Vec::new();
    for i in 0..4 {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let base = if i == 2 { -1.0 } else { i as f32 * 10.0 };
            infer(&state, &body(1, 4, base, None)).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, reply) = t.await.unwrap();
        if i == 2 {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
            assert!(reply["error"].as_str().unwrap().contains("refuses -1"));
        } else {
            assert_eq!(status, StatusCode::OK, "request {i}: {reply}");
            let got: Vec<f32> =
                serde_json::from_value(reply["outputs"][0]["data"].clone()).unwrap();
            assert_eq!(got[0], 2.0 * i as f32 * 10.0);
        }
    }
    let executions = log.lock().unwrap().clone();
    assert_eq!(
        executions[0],
        [4, 4],
        "the four were batched first: {executions:?}"
    );
    assert_eq!(executions.len(), 5, "then each ran alone: {executions:?}");
}

fn on_a_worker(thread: &str) -> bool {
    thread.starts_with("oxinfer-probe-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_fast_request_runs_on_the_thread_that_received_it() {
    let (state, _, seen) = probe_state("", "any_thread = true");
    for i in 0..20 {
        let (status, reply) = infer(&state, &body(1, 4, i as f32, None)).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(
            reply["outputs"][0]["data"][1],
            json!(2.0 * (i as f32 + 1.0))
        );
    }
    let threads = seen.threads.lock().unwrap().clone();
    // The first execution's duration is not known yet: a worker runs it.
    assert!(on_a_worker(&threads[0]), "{threads:?}");
    // The others run here, unless a busy machine stretched an execution over the bound (then
    // a few go to the worker until recent ones are fast again).
    let inline = threads[1..].iter().filter(|t| !on_a_worker(t)).count();
    assert!(
        inline >= 10,
        "lone requests ran on the calling thread: {threads:?}"
    );
    let stats = get(&state, "/v2/models/probe/stats").await;
    let s = &stats["model_stats"][0];
    assert_eq!(s["execution_count"], json!(20));
    assert_eq!(s["inference_stats"]["queue"]["count"], json!(20));
    // A deadline already past is answered as a worker answers it: not executed.
    let (status, reply) = infer(&state, &body(1, 4, 0.0, Some(0))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{reply}");
    assert_eq!(seen.threads.lock().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_models_and_models_kept_to_their_threads_run_on_workers() {
    // 1 ms per execution: over the inline bound.
    let (slow, _, slow_seen) = probe_state("", "any_thread = true\nsleep_ms = 1");
    // Fast, but its runtime does not say it may run anywhere.
    let (kept, _, kept_seen) = probe_state("", "");
    // Fast, but with dynamic batching: requests wait for others.
    let (batched, _, batched_seen) = probe_state(
        "max_batch_size = 8\nmax_queue_delay_us = 100",
        "any_thread = true",
    );
    for state in [&slow, &kept, &batched] {
        for i in 0..4 {
            assert_eq!(
                infer(state, &body(1, 4, i as f32, None)).await.0,
                StatusCode::OK
            );
        }
    }
    for seen in [slow_seen, kept_seen, batched_seen] {
        let threads = seen.threads.lock().unwrap().clone();
        assert_eq!(threads.len(), 4);
        assert!(threads.iter().all(|t| on_a_worker(t)), "{threads:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_go_to_the_worker_and_an_instance_runs_one_at_a_time() {
    let (state, log, seen) = probe_state("instances = 1", "any_thread = true");
    // Known fast first, so that inline runs are possible.
    assert_eq!(
        infer(&state, &body(1, 4, 0.0, None)).await.0,
        StatusCode::OK
    );
    let mut tasks = Vec::new();
    for i in 0..64 {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let (status, reply) = infer(&state, &body(2, 4, i as f32, None)).await;
            assert_eq!(status, StatusCode::OK, "{reply}");
            assert_eq!(reply["outputs"][0]["data"][0], json!(2.0 * i as f32));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(log.lock().unwrap().len(), 65);
    assert_eq!(
        seen.most.load(Ordering::SeqCst),
        1,
        "the one instance never ran two executions at once"
    );
    // Which of them found the instance busy and went to the worker depends on timing; that
    // one that does goes there is the scheduler's unit test
    // `a_request_that_finds_the_instance_busy_goes_to_its_worker`.
}
