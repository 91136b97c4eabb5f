//! End-to-end tests: start the real `oxinfer` binary on `127.0.0.1` with a free port and talk to
//! it over TCP, as a client would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod plugins;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_oxinfer")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example_manifest() -> PathBuf {
    repo_root().join("examples/oxinfer.toml")
}

/// A running server, killed on drop.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(manifest: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(bin())
            .args(["serve", "--manifest"])
            .arg(manifest)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .args(extra)
            .env("OXINFER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start oxinfer");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("HTTP listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server did not start: {}", log.lock().unwrap()));
        Server { child, addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit: {}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET or POST with ureq; returns status and parsed JSON body, for success and error alike.
fn request(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let req = ureq::request(method, url).timeout(Duration::from_secs(30));
    let result = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    assert_eq!(response.content_type(), "application/json");
    let status = response.status();
    (
        status,
        serde_json::from_str(&response.into_string().unwrap()).unwrap(),
    )
}

fn simple_body() -> String {
    let a: Vec<i32> = (0..16).collect();
    json!({"id": "e2e", "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]},
    ]})
    .to_string()
}

fn assert_simple_ok(server: &Server) {
    let (status, body) = request(
        "POST",
        &server.url("/v2/models/simple/infer"),
        Some(&simple_body()),
    );
    assert_eq!(status, 200, "{body}");
    let expected: Vec<i32> = (1..17).collect();
    assert_eq!(body["outputs"][0]["data"], json!(expected));
}

/// Sends raw bytes on a new connection and returns whatever the server answers until it closes
/// the connection or `timeout` passes.
fn raw_exchange(addr: &str, parts: &[&[u8]], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    for part in parts {
        stream.write_all(part).unwrap();
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn serves_the_example_manifest() {
    let server = Server::start(&example_manifest(), &[]);
    let (status, body) = request("GET", &server.url("/v2/health/ready"), None);
    assert_eq!((status, body), (200, json!({"ready": true})));
    let (status, body) = request("GET", &server.url("/v2/models/mlp"), None);
    assert_eq!(status, 200);
    assert_eq!(body["versions"], json!(["1", "2"]));
    assert_simple_ok(&server);
    let (_, body) = request(
        "POST",
        &server.url("/v2/models/simple/infer"),
        Some(&simple_body()),
    );
    assert_eq!(body["id"], "e2e");
    assert_eq!(body["model_version"], "1");
}

#[test]
fn sigterm_finishes_the_in_flight_request_then_exits_zero() {
    let mut server = Server::start(&example_manifest(), &[]);
    let body = simple_body();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    // A request whose body is half sent when the signal arrives.
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.signal("-TERM");
    std::thread::sleep(Duration::from_millis(300));
    // No new connections are accepted...
    assert!(
        TcpStream::connect(&server.addr).is_err() || !request_ok(&server.url("/v2/health/live")),
        "the listener should be closed during shutdown"
    );
    // ...but the in-flight request completes.
    stream.write_all(rest).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""id":"e2e""#), "{response}");
    let status = server.wait(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    assert!(server.log.lock().unwrap().contains("received SIGTERM"));
}

fn request_ok(url: &str) -> bool {
    ureq::get(url)
        .timeout(Duration::from_secs(2))
        .call()
        .is_ok()
}

#[test]
fn sigint_exits_zero() {
    let mut server = Server::start(&example_manifest(), &[]);
    assert_simple_ok(&server);
    server.signal("-INT");
    assert!(server.wait(Duration::from_secs(20)).success());
}

#[test]
fn oversized_and_truncated_bodies_get_answers_not_hangs() {
    let server = Server::start(&example_manifest(), &["--max-request-bytes", "1000"]);
    let url = server.url("/v2/models/simple/infer");
    let (status, body) = request("POST", &url, Some(&" ".repeat(2000)));
    assert_eq!(status, 413);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("limit of 1000 bytes")
    );
    // A Content-Length far above the limit is refused at once, without waiting for the body.
    let started = Instant::now();
    let reply = raw_exchange(
        &server.addr,
        &[b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{"],
        Duration::from_secs(10),
    );
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body shorter than its Content-Length: the client gives up, the server answers or
    // closes, and keeps serving.
    let reply = raw_exchange(
        &server.addr,
        &[b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"inputs\":"],
        Duration::from_secs(10),
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_simple_ok(&server);
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oxinfer-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str], manifest: &Path) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--manifest")
        .arg(manifest)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_each_model_signature() {
    let (ok, stdout, _) = run(&["check"], &example_manifest());
    assert!(ok);
    assert!(stdout.contains("simple (version 1, tract):"), "{stdout}");
    assert!(stdout.contains("input  INPUT0"), "{stdout}");
    assert!(stdout.contains("INT32  [-1, 16]"), "{stdout}");
    assert!(stdout.contains("output probs"), "{stdout}");
    assert!(
        stdout.contains("OK, 5 model(s)") || stdout.contains("OK, 4 model(s)"),
        "{stdout}"
    );
}

#[test]
fn a_bad_manifest_stops_startup_with_file_model_and_cause() {
    let dir = temp_dir("bad");
    let models = repo_root().join("examples/models");
    std::fs::write(dir.join("garbage.onnx"), b"this is not an onnx file").unwrap();
    let simple = models.join("simple.onnx");
    let entry = |name: &str, runtime: &str, path: &Path, extra: &str| {
        format!(
            "[[models]]\nname = \"{name}\"\nruntime = \"{runtime}\"\npath = \"{}\"\n{extra}\n",
            path.display()
        )
    };
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown-runtime",
            entry("m", "pytorch", &simple, ""),
            vec!["model 'm' version 1", "unknown runtime 'pytorch'"],
        ),
        (
            "candle-needs-a-directory",
            entry("m", "candle", &simple, ""),
            vec![
                "model 'm'",
                "path must be a model directory with config.json",
            ],
        ),
        (
            "missing-file",
            entry("m", "tract", &dir.join("nope.onnx"), ""),
            vec!["model 'm'", "file not found", "nope.onnx"],
        ),
        (
            "duplicate",
            entry("m", "tract", &simple, "") + &entry("m", "tract", &simple, ""),
            vec!["model 'm' version 1 is listed twice"],
        ),
        (
            "unknown-key",
            entry("m", "tract", &simple, "colour = \"red\""),
            vec!["unknown field `colour`"],
        ),
        (
            "unknown-option",
            entry("m", "tract", &simple, "[models.options]\nturbo = true"),
            vec![
                "model 'm'",
                "invalid options for runtime 'tract'",
                "unknown field `turbo`",
            ],
        ),
        (
            "load-failure",
            entry("broken", "tract", &dir.join("garbage.onnx"), ""),
            vec![
                "model 'broken' version 1",
                "tract could not load",
                "garbage.onnx",
            ],
        ),
        ("bad-toml", "[[models]\n".to_string(), vec!["bad-toml.toml"]),
        (
            "runtime-settings-unknown",
            "[runtimes.pytorch]\nx = 1\n".to_string() + &entry("m", "tract", &simple, ""),
            vec!["[runtimes.pytorch]", "unknown runtime 'pytorch'"],
        ),
        (
            "runtime-settings-key",
            "[runtimes.tract]\nthreads = 1\n".to_string() + &entry("m", "tract", &simple, ""),
            vec![
                "model 'm'",
                "invalid [runtimes.tract] settings",
                "unknown field `threads`",
            ],
        ),
    ];
    for (name, text, needles) in cases {
        let manifest = dir.join(format!("{name}.toml"));
        std::fs::write(&manifest, text).unwrap();
        for command in [vec!["check"], vec!["serve", "--http", "127.0.0.1:0"]] {
            let started = Instant::now();
            let (ok, _, stderr) = run(&command, &manifest);
            assert!(!ok, "{name}: {command:?} should fail");
            assert!(started.elapsed() < Duration::from_secs(30));
            assert!(
                stderr.contains(&format!("{name}.toml")),
                "{name}: the file is named: {stderr}"
            );
            for needle in &needles {
                assert!(stderr.contains(needle), "{name}: '{needle}' in: {stderr}");
            }
        }
    }
}

/// A minimal OTLP/HTTP collector: accepts `POST /v1/traces` (protobuf) and keeps the requests.
fn fake_collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_ok() {
                sink.lock().unwrap().push(body);
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (addr, bodies)
}

#[test]
fn request_spans_are_exported_over_otlp() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let (collector, bodies) = fake_collector();
    let dir = temp_dir("otlp");
    let manifest = dir.join("otlp.toml");
    std::fs::write(
        &manifest,
        format!(
            "[telemetry]\notlp_endpoint = \"http://{collector}\"\nservice_name = \"oxinfer-e2e\"\n\
             [[models]]\nname = \"simple\"\nruntime = \"tract\"\npath = \"{}\"\n",
            repo_root().join("examples/models/simple.onnx").display()
        ),
    )
    .unwrap();
    let mut server = Server::start(&manifest, &[]);
    let response = ureq::post(&server.url("/v2/models/simple/infer"))
        .set("X-Request-ID", "traced-1")
        .send_string(&simple_body())
        .unwrap();
    assert_eq!(response.header("x-request-id"), Some("e2e"));
    server.signal("-TERM");
    assert!(server.wait(Duration::from_secs(30)).success());
    let bodies = bodies.lock().unwrap();
    let spans: Vec<_> = bodies
        .iter()
        .flat_map(|b| {
            ExportTraceServiceRequest::decode(b.as_slice())
                .unwrap()
                .resource_spans
        })
        .inspect(|rs| {
            let service = rs
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .find(|a| a.key == "service.name");
            assert!(format!("{service:?}").contains("oxinfer-e2e"));
        })
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect();
    let infer = spans
        .iter()
        .find(|s| s.name == "infer")
        .expect("an infer span");
    let attributes = format!("{:?}", infer.attributes);
    assert!(
        attributes.contains("request_id") && attributes.contains("e2e"),
        "{attributes}"
    );
    assert!(attributes.contains("simple"), "{attributes}");
    // The caller's identity (a token's name, a certificate's subject; none here) is an attribute.
    assert!(attributes.contains("\"identity\""), "{attributes}");
}
