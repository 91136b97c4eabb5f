//! The manifest: a TOML file that lists the models to load at startup.
//!
//! ```toml
//! [server]                     # optional; command-line flags override it
//! http = "127.0.0.1:8080"
//! grpc = "127.0.0.1:8081"
//! max_request_bytes = 67108864
//! drain_seconds = 5            # on SIGTERM: readiness false, still serving, for 5 s
//!
//! [[models]]
//! name = "mlp"
//! version = "1"                # optional, default "1"; a non-negative integer
//! runtime = "tract"            # tract | onnxruntime | candle | plugin
//! path = "models/mlp.onnx"     # relative to this file's directory
//! [models.options]             # runtime-specific, checked by that runtime
//!
//! [runtimes.onnxruntime]       # process-wide settings of one runtime
//! library = "/opt/onnxruntime/lib/libonnxruntime.so.1.31.1"
//! ```
//!
//! [`Manifest::load`] checks everything that does not need a runtime: unknown keys, duplicate
//! name/version pairs, names that cannot appear in a URL path, versions that are not integers,
//! and files that do not exist. Runtimes check their own `options` when they load the model.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::{Error, Result};

/// The default request body limit: 64 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// The default budget of bytes held by requests in flight: 1 GiB.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 1024 * 1024 * 1024;

/// A parsed and checked manifest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Server settings.
    #[serde(default)]
    pub server: ServerSettings,
    /// Process-wide settings per runtime (`[runtimes.onnxruntime]`, ...), checked by that
    /// runtime. Only runtimes that a model uses are configured.
    #[serde(default)]
    pub runtimes: BTreeMap<String, toml::Table>,
    /// The models to load, in file order.
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// The inference log (`[inference_log]`); off when absent.
    pub inference_log: Option<InferenceLogSettings>,
    /// OpenTelemetry export (`[telemetry]`); off when absent.
    pub telemetry: Option<TelemetrySettings>,
    /// Access control (`[auth]`): bearer tokens with scopes; off (anyone may call anything)
    /// when absent. Its `tokens_file` is read when the manifest is.
    pub auth: Option<AuthSettings>,
    /// How models named by URI (`models:/`, `s3://`, `https://`) are fetched (`[sources]`).
    #[serde(default)]
    pub sources: crate::source::SourcesSettings,
    /// The file this manifest was read from (not a TOML key).
    #[serde(skip)]
    pub source: PathBuf,
}

/// The `[server]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address of the HTTP (REST) listener, e.g. `127.0.0.1:8080`; port 0 picks a free port.
    pub http: Option<String>,
    /// Address of the gRPC listener.
    pub grpc: Option<String>,
    /// The largest request body accepted, in bytes ([`DEFAULT_MAX_REQUEST_BYTES`] if unset).
    pub max_request_bytes: Option<usize>,
    /// The bytes all requests in flight may hold together: bodies, decoded tensors, outputs,
    /// responses being sent and records waiting for the inference log
    /// ([`DEFAULT_MAX_INFLIGHT_BYTES`] if unset). A request that would go over it is refused
    /// with HTTP 503 / gRPC `RESOURCE_EXHAUSTED`. At least `max_request_bytes`.
    pub max_inflight_bytes: Option<usize>,
    /// Web origins (`https://app.example.com`, or `*` for any) whose pages may call the REST
    /// API from a browser. Empty (the default): a request carrying an `Origin` header is
    /// refused, so that no web page a user opens can drive the server.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// On SIGTERM / SIGINT, how long open connections (in-flight requests, idle keep-alive or
    /// HTTP/2 clients, half-sent requests) may keep the server from exiting before they are
    /// closed, in seconds (default 10).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_seconds: u64,
    /// Set `TCP_NODELAY` on every accepted connection, both ports (default true): small
    /// responses leave at once instead of waiting for Nagle's algorithm.
    #[serde(default = "yes")]
    pub tcp_nodelay: bool,
    /// The gRPC port's HTTP/2 initial stream window, in bytes (default 16 MiB): how much of a
    /// message may be in flight before the receiver acknowledges it.
    #[serde(default = "default_stream_window")]
    pub http2_stream_window_bytes: u32,
    /// The gRPC port's HTTP/2 initial connection window, in bytes (default 32 MiB).
    #[serde(default = "default_connection_window")]
    pub http2_connection_window_bytes: u32,
    /// When gRPC responses are gzip-compressed: `request` (default: when the request came
    /// compressed and the client accepts gzip), `always` (whenever the client accepts gzip,
    /// as grpcio clients advertise by default), `never`.
    #[serde(default)]
    pub grpc_compression: GrpcCompression,
    /// On SIGTERM / SIGINT, how long to keep serving with readiness false before closing the
    /// listeners, in seconds (default 0): the time a load balancer (a Kubernetes endpoint
    /// removal) takes to stop sending new requests. A second signal ends the window.
    #[serde(default)]
    pub drain_seconds: u64,
    /// TLS on both ports (`[server.tls]`); plaintext when absent.
    pub tls: Option<TlsSettings>,
    /// A connection must complete its first request's headers (and its TLS handshake) within
    /// this many seconds of connecting, and an HTTP/1.1 connection each later request's
    /// headers within this many seconds of starting to wait for them, or it is closed
    /// (default 30): a slow-loris client cannot hold a connection by trickling a header.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_seconds: u64,
    /// A connection with no request in flight for this many seconds is closed (default 300),
    /// on both ports, HTTP/1.1 and HTTP/2 alike.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Open connections allowed per port (default 4096); one more is closed as soon as it is
    /// accepted. Keep it below the process's file-descriptor limit (`ulimit -n`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests in flight allowed server-wide, both ports together (default 2048); one more is
    /// answered at once with HTTP 429 / gRPC `RESOURCE_EXHAUSTED`. Probes (server and model
    /// liveness and readiness, both protocols) and `/metrics` are not counted.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// HTTP/2 streams (requests) one connection may have open at once, both ports
    /// (default 256).
    #[serde(default = "default_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// The largest header list (all headers or gRPC metadata of one request) accepted, in
    /// bytes, HTTP/2 on both ports (default 65536); HTTP/1.1 headers are bounded at 100
    /// headers and 400 KiB.
    #[serde(default = "default_max_header_list")]
    pub http2_max_header_list_bytes: u32,
    /// Where models fetched from a registry, an object store or a URL are kept, by content
    /// digest (default `$XDG_CACHE_HOME/oxinfer`, else `~/.cache/oxinfer`). Served from here
    /// when the source is unreachable.
    pub model_cache: Option<PathBuf>,
}

/// The `[server.tls]` table: certificates for both ports (paths relative to the manifest).
/// Re-read on SIGHUP, so that a rotated certificate is served to new connections.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (PEM): mutual
    /// TLS. The certificate's subject is then the caller's identity.
    pub client_ca: Option<PathBuf>,
}

fn default_shutdown_timeout() -> u64 {
    10
}

fn default_header_read_timeout() -> u64 {
    30
}

fn default_idle_timeout() -> u64 {
    300
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_concurrent_requests() -> usize {
    2048
}

fn default_max_concurrent_streams() -> u32 {
    256
}

fn default_max_header_list() -> u32 {
    64 * 1024
}

fn yes() -> bool {
    true
}

fn default_stream_window() -> u32 {
    16 * 1024 * 1024
}

fn default_connection_window() -> u32 {
    32 * 1024 * 1024
}

/// `[server] grpc_compression`: when gRPC responses are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpcCompression {
    /// When the request itself came compressed (and the client accepts gzip).
    #[default]
    Request,
    /// Whenever the client accepts gzip.
    Always,
    /// Never.
    Never,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            http: None,
            grpc: None,
            max_request_bytes: None,
            max_inflight_bytes: None,
            cors_origins: Vec::new(),
            shutdown_timeout_seconds: default_shutdown_timeout(),
            tcp_nodelay: true,
            http2_stream_window_bytes: default_stream_window(),
            http2_connection_window_bytes: default_connection_window(),
            grpc_compression: GrpcCompression::Request,
            drain_seconds: 0,
            tls: None,
            header_read_timeout_seconds: default_header_read_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_concurrent_requests: default_max_concurrent_requests(),
            http2_max_concurrent_streams: default_max_concurrent_streams(),
            http2_max_header_list_bytes: default_max_header_list(),
            model_cache: None,
        }
    }
}

/// The `[auth]` table: who may call what. With it, every call but the liveness and readiness
/// probes (unless `protect_health`) needs `Authorization: Bearer <secret>` (gRPC: the
/// `authorization` metadata) of a token declared here or in `tokens_file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The tokens, each by the SHA-256 of its secret.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    /// More tokens, as `[[tokens]]` tables in a TOML file (relative to the manifest), read
    /// with the manifest (at startup and on SIGHUP), so that tokens can be rotated without
    /// touching the manifest.
    pub tokens_file: Option<PathBuf>,
    /// Require the `read` scope for the liveness and readiness probes too (default false:
    /// probes stay open, as Kubernetes and load balancers call them without a token).
    #[serde(default)]
    pub protect_health: bool,
}

/// One token of `[[auth.tokens]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The identity recorded for its requests (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// The SHA-256 of the secret, in hex (`oxinfer token new` prints a secret and this line).
    pub sha256: String,
    /// What the token may do: `read`, `infer`, `admin`, `metrics`.
    pub scopes: Vec<Scope>,
    /// The models it may use (metadata, readiness, inference, load/unload); all when absent.
    pub models: Option<Vec<String>>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Server and model metadata, model readiness, configuration, statistics.
    Read,
    /// Inference (OIP, embeddings).
    Infer,
    /// The model repository: index, load, unload.
    Admin,
    /// `/metrics`.
    Metrics,
}

impl Scope {
    /// The scope's name in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Infer => "infer",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }
}

/// A `tokens_file`: `[[tokens]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

impl AuthSettings {
    /// Reads `tokens_file` (already resolved against the manifest's directory) into `tokens`
    /// and checks every token: names and digests unique, digests 64 hex digits, scopes given.
    fn resolve(&mut self, base: &Path) -> std::result::Result<(), String> {
        if let Some(file) = &mut self.tokens_file {
            if file.is_relative() {
                *file = base.join(&*file);
            }
            let text = std::fs::read_to_string(&*file)
                .map_err(|e| format!("[auth] tokens_file {}: {e}", file.display()))?;
            let more: TokensFile = toml::from_str(&text)
                .map_err(|e| format!("[auth] tokens_file {}: {e}", file.display()))?;
            self.tokens.extend(more.tokens);
        }
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        for token in &mut self.tokens {
            if token.name.is_empty()
                || !token
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "[auth] token name '{}' must be non-empty and use only ASCII letters, digits, \
                     '-', '_' and '.'",
                    token.name
                ));
            }
            let hex = token
                .sha256
                .strip_prefix("sha256:")
                .unwrap_or(&token.sha256);
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "[auth] token '{}': sha256 must be the SHA-256 of the secret (64 hex digits), \
                     not the secret itself",
                    token.name
                ));
            }
            token.sha256 = hex.to_ascii_lowercase();
            // The SHA-256 of nothing: what `echo -n "$UNSET" | sha256sum` gives. It would let
            // `Authorization: Bearer ` with no secret in.
            if token.sha256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
                return Err(format!(
                    "[auth] token '{}': sha256 is the digest of an empty secret",
                    token.name
                ));
            }
            for model in token.models.iter().flatten() {
                if model.is_empty()
                    || !model
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(format!(
                        "[auth] token '{}': '{model}' is not a model name (ASCII letters, \
                         digits, '-', '_' and '.')",
                        token.name
                    ));
                }
            }
            if token.scopes.is_empty() {
                return Err(format!(
                    "[auth] token '{}': scopes is empty (read, infer, admin, metrics)",
                    token.name
                ));
            }
            if !names.insert(token.name.clone()) {
                return Err(format!(
                    "[auth] token name '{}' is declared twice",
                    token.name
                ));
            }
            if !digests.insert(token.sha256.clone()) {
                return Err(format!(
                    "[auth] token '{}' has the same secret as another token",
                    token.name
                ));
            }
        }
        Ok(())
    }
}

/// The `[telemetry]` table: export request spans to an OpenTelemetry collector over OTLP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318` (spans go to
    /// `<endpoint>/v1/traces`, protobuf encoded).
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute (default `oxinfer`).
    pub service_name: Option<String>,
}

/// What to do when the inference log's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Wait for room: requests slow down, no record is lost (default).
    #[default]
    Block,
    /// Drop the record and count it in `oxinfer_inference_log_records_dropped_total`.
    Drop,
}

/// The `[inference_log]` table: one tamper-evident JSON Lines record per inference request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceLogSettings {
    /// The log file (relative to the manifest's directory); rotated files get a UTC timestamp
    /// suffix.
    pub path: PathBuf,
    /// Rotate when the file reaches this size in bytes (default 100 MiB).
    #[serde(default = "default_log_bytes")]
    pub max_file_bytes: u64,
    /// Also rotate when the file is this many seconds old (default: size only).
    pub rotate_seconds: Option<u64>,
    /// Rotated files kept; older ones are deleted (default 10).
    #[serde(default = "default_retention")]
    pub retention_files: usize,
    /// Tensors larger than this many bytes are recorded as their SHA-256 and size only
    /// (default 65536).
    #[serde(default = "default_tensor_cap")]
    pub max_tensor_bytes: usize,
    /// A record longer than this many bytes has its tensors replaced by their digests, and if
    /// that is still too long, left out with their count (default 1 MiB).
    #[serde(default = "default_record_cap")]
    pub max_record_bytes: usize,
    /// Records queued between the request path and the writer (default 4096).
    #[serde(default = "default_capacity")]
    pub queue_capacity: usize,
    /// Policy when the queue is full.
    #[serde(default)]
    pub on_full: OnFull,
    /// Policy while records cannot be written (a full disk, an I/O error).
    #[serde(default)]
    pub on_error: OnError,
    /// An Ed25519 private key (PKCS#8 PEM, relative to the manifest's directory) that signs
    /// checkpoints: records carrying the chain head and its signature, so that cutting off the
    /// newest records can be detected (`oxinfer audit verify --public-key`). Off when absent.
    pub signing_key: Option<PathBuf>,
    /// With `signing_key`: a checkpoint after this many records (default 1000).
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_records: u64,
    /// With `signing_key`: a checkpoint when the oldest record not yet covered by one is this
    /// many seconds old (default 60). A checkpoint is also written at shutdown.
    #[serde(default = "default_checkpoint_seconds")]
    pub checkpoint_seconds: u64,
    /// Records are written to the file as soon as the writer has drained its queue (from
    /// then on a crash of the process loses none of them); they are synced to the disk
    /// (`fdatasync`, surviving a crash of the machine) at most this many milliseconds later
    /// (default 100), and at rotation and shutdown. 0 syncs every time the queue drains, at a
    /// large cost in throughput.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_ms: u64,
}

/// What to do while the inference log cannot be written. Either way the file keeps only whole
/// records, failed writes are retried in order, and they are counted in
/// `oxinfer_inference_log_write_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Keep serving; records wait in memory (bounded) for the writes to succeed again
    /// (default).
    #[default]
    Serve,
    /// Refuse requests (503 / `UNAVAILABLE`) until records can be written again: for users who
    /// must not serve a prediction that is not recorded.
    Refuse,
}

fn default_log_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_retention() -> usize {
    10
}
fn default_tensor_cap() -> usize {
    64 * 1024
}
fn default_record_cap() -> usize {
    1 << 20
}
fn default_capacity() -> usize {
    4096
}
fn default_checkpoint_records() -> u64 {
    1000
}
fn default_checkpoint_seconds() -> u64 {
    60
}
fn default_sync_interval() -> u64 {
    100
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The model's name, as it appears in URLs.
    pub name: String,
    /// The model's version: a non-negative integer, default `"1"`. Several versions of one name
    /// may be served side by side; the unversioned path resolves to the highest.
    #[serde(default = "default_version", deserialize_with = "version_string")]
    pub version: String,
    /// The runtime that loads it (`tract`, `onnxruntime`, `candle`, `plugin`).
    pub runtime: String,
    /// The model file or directory; relative paths are resolved against the manifest's
    /// directory by [`Manifest::load`]. Or a URI (`models:/NAME/VERSION`, `models:/NAME@ALIAS`,
    /// `s3://BUCKET/KEY`, `https://...`), held in [`ModelEntry::uri`] and fetched when the
    /// model is loaded.
    pub path: PathBuf,
    /// The remote source `path` names, when it is a URI (not a TOML key).
    #[serde(skip)]
    pub uri: Option<crate::source::ModelUri>,
    /// Runtime-specific options.
    #[serde(default)]
    pub options: toml::Table,
    /// The expected SHA-256 of the model (hex; for a directory, its stable digest, see
    /// the server's model digests): loading refuses a model whose digest differs.
    pub sha256: Option<String>,
    /// Where the model came from, reported with every prediction.
    #[serde(default)]
    pub provenance: Provenance,
    /// How requests reach the model: instances, dynamic batching, queue bound, default
    /// timeout (`[models.scheduler]`).
    #[serde(default)]
    pub scheduler: Scheduling,
    /// What one request may ask of the model (`[models.limits]`).
    #[serde(default)]
    pub limits: Limits,
    /// Requests run before the model reports ready (`[models.warmup]`).
    pub warmup: Option<Warmup>,
    /// When `path` is a directory of versions (`1/`, `2/`, ...): which of them to serve
    /// (`{ latest = N }`, `{ all = true }`, `{ specific = [..] }`). The entry then stands for
    /// one entry per version found; `version` must be left out.
    pub version_policy: Option<crate::layout::VersionPolicy>,
    /// Why this version is listed but not served: the version policy leaves it out. Set when
    /// a directory of versions is expanded, never in a manifest.
    #[serde(skip)]
    pub excluded: Option<String>,
    /// Whether `runtime` was detected from the files rather than named (repository layouts).
    #[serde(skip)]
    pub runtime_detected: bool,
    /// The directory of versions this entry was expanded from.
    #[serde(skip)]
    pub versions_dir: Option<PathBuf>,
    /// Serve the model over the OpenAI and TEI embedding APIs (`[models.embeddings]`): needed
    /// only for models whose runtime does not say it is an embedding model itself (candle's
    /// text models do), or to change how they are served.
    pub embeddings: Option<Embeddings>,
}

/// `[models.embeddings]`: how a text-embedding model is served over `/v1/embeddings` (OpenAI)
/// and `/embed` (TEI). Every key is optional for a model whose runtime describes it (candle's
/// text models); `input` and `output` are needed for others.
///
/// ```toml
/// [models.embeddings]
/// input = "text"                # the BYTES input, one string per row
/// output = "embedding"          # the FP32 output, one vector per row
/// normalized = true             # whether the vectors are already L2-normalised
/// matryoshka = false            # trained so that a prefix of a vector is an embedding too:
///                               # OpenAI's `dimensions` truncates and renormalises
/// max_client_batch_size = 1024  # inputs in one request; more is 413
/// tokenizer = "tokenizer.json"  # for token counts when the runtime does not tokenize
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embeddings {
    /// The `BYTES` input taking one string per row.
    pub input: Option<String>,
    /// The `FP32` output with one vector per row.
    pub output: Option<String>,
    /// Whether the vectors are already L2-normalised (default: what the runtime says, else
    /// false).
    pub normalized: Option<bool>,
    /// Whether a prefix of a vector is an embedding too (Matryoshka training), so OpenAI's
    /// `dimensions` may truncate and renormalise (default false: `dimensions` must be the full
    /// size).
    #[serde(default)]
    pub matryoshka: bool,
    /// The most inputs one request may carry (default [`DEFAULT_MAX_CLIENT_BATCH_SIZE`]).
    #[serde(default = "default_max_client_batch_size")]
    pub max_client_batch_size: usize,
    /// A Hugging Face `tokenizer.json` for token counts and `/tokenize`, for a model whose
    /// runtime does not tokenize (default: `tokenizer.json` beside the model file or in its
    /// directory, when there is one). Relative to the manifest.
    pub tokenizer: Option<PathBuf>,
}

/// The default number of inputs one embeddings request may carry.
pub const DEFAULT_MAX_CLIENT_BATCH_SIZE: usize = 1024;

fn default_max_client_batch_size() -> usize {
    DEFAULT_MAX_CLIENT_BATCH_SIZE
}

impl Default for Embeddings {
    fn default() -> Self {
        Embeddings {
            input: None,
            output: None,
            normalized: None,
            matryoshka: false,
            max_client_batch_size: DEFAULT_MAX_CLIENT_BATCH_SIZE,
            tokenizer: None,
        }
    }
}

/// `[models.warmup]`: requests each instance of the model runs before the model reports ready
/// (first-request latency paid at load: compiled plans, allocated arenas, paged-in weights). A
/// warmup request that fails fails the load, with its error.
///
/// ```toml
/// [models.warmup]
/// zeros = true                  # one request of zeros (dynamic dimensions taken as 1)
/// requests = ["warmup.json"]    # OIP JSON request bodies, relative to the manifest
/// count = 3                     # times each request runs (default 1)
/// [[models.warmup.inputs]]      # one inline request, tensors as in OIP JSON
/// name = "x"
/// datatype = "FP32"
/// shape = [1, 4]
/// data = [0.5, 1.0, -0.25, 2.0]
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// Run one request of zeros (not for `BYTES` inputs).
    #[serde(default)]
    pub zeros: bool,
    /// Files holding OIP JSON request bodies.
    #[serde(default)]
    pub requests: Vec<PathBuf>,
    /// The tensors of one inline request, as in OIP JSON.
    #[serde(default)]
    pub inputs: Vec<toml::Value>,
    /// How many times each request runs.
    #[serde(default = "one")]
    pub count: usize,
}

/// `[models.limits]`: bounds on what one request may make the server do, checked before the
/// model runs. Every key is optional.
///
/// ```toml
/// [models.limits]
/// max_rows = 1048576              # first dimension of any input
/// max_dimension = 16777216        # any dimension of any input
/// max_empty_extent = 65536        # an input without elements: its non-zero dimensions' product
/// max_output_bytes = 268435456    # the outputs of one request (estimated before, checked after)
/// ```
///
/// A request with zero-sized dimensions carries no data but can still ask for a huge batch
/// (`[1048576, 3, 0, 0]`); these bounds keep such a request from making the model allocate, and
/// the server send back, far more than it sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The largest first dimension (rows) of any input (default 2^20 = 1048576).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// The largest size of any dimension of any input (default 2^24 = 16777216).
    #[serde(default = "default_max_dimension")]
    pub max_dimension: usize,
    /// An input with no elements (a zero-sized dimension) carries no data, so its other
    /// dimensions cost the client nothing: their product may be at most this (default 65536).
    #[serde(default = "default_max_empty_extent")]
    pub max_empty_extent: usize,
    /// The largest total size of one request's outputs, in bytes (default 256 MiB): refused
    /// before execution when the signature shows the outputs would be larger (their dynamic
    /// first dimensions taken as the request's rows), and after it when they are.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: usize,
}

fn default_max_rows() -> usize {
    1 << 20
}
fn default_max_empty_extent() -> usize {
    65536
}
fn default_max_dimension() -> usize {
    1 << 24
}
fn default_max_output_bytes() -> usize {
    256 << 20
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rows: default_max_rows(),
            max_dimension: default_max_dimension(),
            max_empty_extent: default_max_empty_extent(),
            max_output_bytes: default_max_output_bytes(),
        }
    }
}

/// `[models.scheduler]`: the per-model request scheduler, in Triton's vocabulary. Every key is
/// optional; the defaults run one instance, no batching, and a queue of 1024 requests.
///
/// ```toml
/// [models.scheduler]
/// instances = 2                   # model instances executing in parallel (threads)
/// max_batch_size = 32             # > 0 turns on dynamic batching, up to this many rows
/// max_queue_delay_us = 500        # how long the first request of a batch waits for others
/// preferred_batch_sizes = [8, 16] # run at once when the batch reaches one of these
/// max_queue_size = 1024           # requests waiting; more are refused with 503 / UNAVAILABLE
/// default_timeout_us = 0          # queue deadline when the request sets no `timeout` (0: none)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduling {
    /// Model instances executing in parallel, one worker thread each (default 1).
    #[serde(default = "one")]
    pub instances: usize,
    /// The most rows one batched execution may have; 0 (the default) turns batching off.
    #[serde(default)]
    pub max_batch_size: usize,
    /// Microseconds the oldest queued request may wait for others to join its batch.
    #[serde(default)]
    pub max_queue_delay_us: u64,
    /// Batch sizes to run as soon as they are reached.
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests that may wait for a worker; further ones are refused at once.
    #[serde(default = "default_queue_size")]
    pub max_queue_size: usize,
    /// The queue deadline, in microseconds, of requests without a `timeout` parameter
    /// (0: none).
    #[serde(default)]
    pub default_timeout_us: u64,
}

fn one() -> usize {
    1
}

fn default_queue_size() -> usize {
    1024
}

impl Default for Scheduling {
    fn default() -> Self {
        Scheduling {
            instances: 1,
            max_batch_size: 0,
            max_queue_delay_us: 0,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: default_queue_size(),
            default_timeout_us: 0,
        }
    }
}

impl Scheduling {
    /// Whether dynamic batching is on.
    pub fn batching(&self) -> bool {
        self.max_batch_size > 0
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.instances == 0 || self.instances > 64 {
            return Err(format!(
                "instances = {} must be between 1 and 64",
                self.instances
            ));
        }
        if self.max_queue_size == 0 {
            return Err("max_queue_size must be at least 1".into());
        }
        if let Some(bad) = self
            .preferred_batch_sizes
            .iter()
            .find(|&&n| n == 0 || n > self.max_batch_size)
        {
            return Err(format!(
                "preferred batch size {bad} must be between 1 and max_batch_size ({})",
                self.max_batch_size
            ));
        }
        if !self.batching() && self.max_queue_delay_us > 0 {
            return Err("max_queue_delay_us needs max_batch_size > 0 (dynamic batching)".into());
        }
        Ok(())
    }
}

/// What the manifest says about where a model came from (all optional).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The registry entry or URL, e.g. `models:/fraud/3` or `https://...`.
    pub source: Option<String>,
    /// The registry's version of the model.
    pub registry_version: Option<String>,
    /// The training run that produced it.
    pub run_id: Option<String>,
    /// When it was created (free text, ideally RFC 3339).
    pub created: Option<String>,
    /// A model card: URL or path.
    pub model_card: Option<String>,
    /// Where the files were fetched from: the registry version's artifact location, or the
    /// object or URL (filled in for models named by URI).
    pub artifact_location: Option<String>,
    /// The registry's description of the version (or of the model).
    pub description: Option<String>,
    /// When the files were downloaded into the cache (RFC 3339).
    pub downloaded: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The registry's tags: the registered model's, then its version's over them.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Provenance {
    /// The provenance as flat `provenance.<key>` string pairs (labels as
    /// `provenance.labels.<name>`, registry tags as `provenance.tags.<name>`), for protocol
    /// `parameters`.
    pub fn flatten(&self) -> Vec<(String, String)> {
        let fields = [
            ("source", &self.source),
            ("registry_version", &self.registry_version),
            ("run_id", &self.run_id),
            ("created", &self.created),
            ("model_card", &self.model_card),
            ("artifact_location", &self.artifact_location),
            ("description", &self.description),
            ("downloaded", &self.downloaded),
        ];
        fields
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (format!("provenance.{k}"), v.clone())))
            .chain(
                self.labels
                    .iter()
                    .map(|(k, v)| (format!("provenance.labels.{k}"), v.clone())),
            )
            .chain(
                self.tags
                    .iter()
                    .map(|(k, v)| (format!("provenance.tags.{k}"), v.clone())),
            )
            .collect()
    }
}

fn default_version() -> String {
    "1".to_string()
}

/// Accepts `version = "2"` and `version = 2`.
fn version_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        I(i64),
    }
    Ok(match V::deserialize(d)? {
        V::S(s) => s,
        V::I(i) => i.to_string(),
    })
}

impl ModelEntry {
    /// The version as a number (checked by [`Manifest::load`]).
    pub fn version_number(&self) -> u64 {
        self.version.parse().unwrap_or(0)
    }
}

impl fmt::Display for ModelEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "model '{}' version {}", self.name, self.version)
    }
}

impl Manifest {
    /// Reads, parses and checks a manifest file.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Manifest(format!("cannot read manifest {}: {e}", path.display()))
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses and checks manifest text; `path` is where it came from (for messages and for
    /// resolving relative model paths).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let fail = |msg: String| Error::Manifest(format!("{}: {msg}", path.display()));
        let mut manifest: Manifest = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        manifest.source = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        if manifest.max_inflight_bytes() < manifest.max_request_bytes() {
            return Err(fail(format!(
                "[server]: max_inflight_bytes ({}) must be at least max_request_bytes ({}), or \
                 no request of the largest size could ever be served",
                manifest.max_inflight_bytes(),
                manifest.max_request_bytes()
            )));
        }
        for (key, window) in [
            (
                "http2_stream_window_bytes",
                manifest.server.http2_stream_window_bytes,
            ),
            (
                "http2_connection_window_bytes",
                manifest.server.http2_connection_window_bytes,
            ),
        ] {
            // HTTP/2 windows are 31-bit; the initial stream window may not be below the
            // protocol's 65535.
            if !(65_535..=0x7fff_ffff).contains(&window) {
                return Err(fail(format!(
                    "[server]: {key} = {window} must be between 65535 and 2147483647"
                )));
            }
        }
        let server = &mut manifest.server;
        for (key, value) in [
            (
                "header_read_timeout_seconds",
                server.header_read_timeout_seconds,
            ),
            ("idle_timeout_seconds", server.idle_timeout_seconds),
            ("max_connections", server.max_connections as u64),
            (
                "max_concurrent_requests",
                server.max_concurrent_requests as u64,
            ),
            (
                "http2_max_concurrent_streams",
                u64::from(server.http2_max_concurrent_streams),
            ),
            (
                "http2_max_header_list_bytes",
                u64::from(server.http2_max_header_list_bytes),
            ),
        ] {
            if value == 0 {
                return Err(fail(format!("[server]: {key} must be at least 1")));
            }
        }
        // A year: longer is "never", which the connection timers cannot represent.
        for (key, value) in [
            (
                "header_read_timeout_seconds",
                server.header_read_timeout_seconds,
            ),
            ("idle_timeout_seconds", server.idle_timeout_seconds),
        ] {
            if value > 31_536_000 {
                return Err(fail(format!(
                    "[server]: {key} = {value} is more than a year (31536000)"
                )));
            }
        }
        if let Some(tls) = &mut server.tls {
            for file in [
                Some(&mut tls.cert),
                Some(&mut tls.key),
                tls.client_ca.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        if let Some(auth) = &mut manifest.auth {
            auth.resolve(base).map_err(fail)?;
        }
        if let Some(log) = &mut manifest.inference_log {
            if log.path.is_relative() {
                log.path = base.join(&log.path);
            }
            if log.queue_capacity == 0 || log.max_file_bytes == 0 {
                return Err(fail(
                    "[inference_log]: queue_capacity and max_file_bytes must be at least 1".into(),
                ));
            }
            if let Some(key) = &mut log.signing_key
                && key.is_relative()
            {
                *key = base.join(&*key);
            }
            if log.sync_interval_ms > 60_000 {
                return Err(fail(
                    "[inference_log]: sync_interval_ms is at most 60000 (a minute)".into(),
                ));
            }
            if log.checkpoint_records == 0 || log.checkpoint_seconds == 0 {
                return Err(fail(
                    "[inference_log]: checkpoint_records and checkpoint_seconds must be at least 1"
                        .into(),
                ));
            }
        }
        let sources = &mut manifest.sources;
        if let Some(file) = &mut sources.ca_file
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        if let Some(dir) = &mut manifest.server.model_cache
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        if !(1..=31_536_000).contains(&sources.timeout_seconds) || sources.retries > 100 {
            return Err(fail(
                "[sources]: timeout_seconds must be between 1 and 31536000, retries at most 100"
                    .into(),
            ));
        }
        let allow_http = sources.http.allow_http;
        for entry in &mut manifest.models {
            if entry.name.is_empty()
                || !entry
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(fail(format!(
                    "model name '{}' must be non-empty and use only ASCII letters, digits, '-', '_' and '.'",
                    entry.name
                )));
            }
            if entry.version.is_empty() || !entry.version.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail(format!(
                    "model '{}': version '{}' must be a non-negative integer",
                    entry.name, entry.version
                )));
            }
            entry.version = entry.version_number().to_string();
            if entry.version_policy.is_some() && (entry.version != "1" || entry.sha256.is_some()) {
                return Err(fail(format!(
                    "model '{}': with version_policy, versions come from the directories of \
                     {}; leave out `version` and `sha256`",
                    entry.name,
                    entry.path.display()
                )));
            }
            if let Some(written) = entry.path.to_str()
                && crate::source::ModelUri::is_uri(written)
            {
                let uri = crate::source::ModelUri::parse(written)
                    .map_err(|e| fail(format!("{entry}: path: {e}")))?;
                if entry.version_policy.is_some() {
                    return Err(fail(format!(
                        "{entry}: version_policy needs a local directory of versions; a model \
                         from {uri} is one version (list one entry per version)"
                    )));
                }
                if let crate::source::ModelUri::Http { url } = &uri {
                    if entry.sha256.is_none() {
                        return Err(fail(format!(
                            "{entry}: a model fetched from a URL needs a pinned sha256, since \
                             nothing else names its content (sha256sum the file, or take the \
                             digest a server that loaded it reports)"
                        )));
                    }
                    if url.starts_with("http://") && !allow_http {
                        return Err(fail(format!(
                            "{entry}: {url} is plain HTTP; use https://, or set [sources.http] \
                             allow_http = true"
                        )));
                    }
                }
                entry.uri = Some(uri);
            } else if entry.path.is_relative() {
                entry.path = base.join(&entry.path);
            }
            if let Some(tokenizer) = entry.embeddings.as_mut().and_then(|e| e.tokenizer.as_mut())
                && tokenizer.is_relative()
            {
                *tokenizer = base.join(&*tokenizer);
            }
            if let Some(warmup) = &mut entry.warmup {
                for file in &mut warmup.requests {
                    if file.is_relative() {
                        *file = base.join(&*file);
                    }
                }
            }
            if entry
                .embeddings
                .as_ref()
                .is_some_and(|e| e.max_client_batch_size == 0)
            {
                return Err(fail(format!(
                    "{entry}: [models.embeddings] max_client_batch_size must be at least 1"
                )));
            }
            if let Some(pin) = &entry.sha256 {
                let hex = pin.strip_prefix("sha256:").unwrap_or(pin);
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(fail(format!(
                        "{entry}: sha256 = \"{pin}\" is not a SHA-256 digest (64 hex digits)"
                    )));
                }
                entry.sha256 = Some(hex.to_ascii_lowercase());
            }
            entry
                .scheduler
                .check()
                .map_err(|e| fail(format!("{entry}: [models.scheduler]: {e}")))?;
            if entry.uri.is_none() && !entry.path.exists() {
                return Err(fail(format!(
                    "{entry}: file not found: {}",
                    entry.path.display()
                )));
            }
        }
        let mut expanded = Vec::with_capacity(manifest.models.len());
        for entry in std::mem::take(&mut manifest.models) {
            if entry.version_policy.is_some() {
                expanded.extend(
                    crate::layout::expand_versions(&entry).map_err(|e| fail(e.to_string()))?,
                );
            } else {
                expanded.push(entry);
            }
        }
        manifest.models = expanded;
        let mut seen = HashSet::new();
        for entry in &manifest.models {
            if !seen.insert((entry.name.clone(), entry.version.clone())) {
                return Err(fail(format!(
                    "{entry} is listed twice; each name/version pair must be unique"
                )));
            }
        }
        Ok(manifest)
    }

    /// Adds entries from elsewhere (a model repository, the single-model form), refusing a
    /// name/version pair that is already there.
    pub fn extend(&mut self, entries: Vec<ModelEntry>) -> Result<()> {
        for entry in entries {
            if self
                .models
                .iter()
                .any(|e| e.name == entry.name && e.version == entry.version)
            {
                return Err(Error::Manifest(format!(
                    "{entry} is given twice (in the manifest and the model directories)"
                )));
            }
            self.models.push(entry);
        }
        Ok(())
    }

    /// The request body limit in bytes.
    pub fn max_request_bytes(&self) -> usize {
        self.server
            .max_request_bytes
            .unwrap_or(DEFAULT_MAX_REQUEST_BYTES)
    }

    /// The budget of bytes held by requests in flight: as set, else 1 GiB or the request body
    /// limit if that is larger.
    pub fn max_inflight_bytes(&self) -> usize {
        self.server
            .max_inflight_bytes
            .unwrap_or(DEFAULT_MAX_INFLIGHT_BYTES.max(self.max_request_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("oxinfer-manifest-{}", std::process::id()));
        std::fs::create_dir_all(d.join("models")).unwrap();
        std::fs::write(d.join("models/a.onnx"), b"x").unwrap();
        d
    }

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(text, &dir().join("oxinfer.toml"))
    }

    #[test]
    fn parses_and_resolves_paths_against_the_manifest() {
        let m = parse(
            r#"
            [server]
            http = "127.0.0.1:0"
            [[models]]
            name = "a"
            runtime = "tract"
            path = "models/a.onnx"
            [models.options]
            anything = 1
            [[models]]
            name = "a"
            version = 2
            runtime = "tract"
            path = "models/a.onnx"
            "#,
        )
        .unwrap();
        assert_eq!(m.server.http.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(m.models[0].version, "1");
        assert_eq!(m.models[1].version, "2");
        assert_eq!(m.models[0].path, dir().join("models/a.onnx"));
        assert_eq!(m.models[0].options["anything"].as_integer(), Some(1));
        assert_eq!(m.max_request_bytes(), DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!(m.max_inflight_bytes(), DEFAULT_MAX_INFLIGHT_BYTES);
    }

    #[test]
    fn each_mistake_is_named() {
        let entry = |extra: &str| {
            format!(
                "[[models]]\nname = \"a\"\nruntime = \"tract\"\npath = \"models/a.onnx\"\n{extra}"
            )
        };
        let e = parse(&entry("colour = 1")).unwrap_err().to_string();
        assert!(
            e.contains("oxinfer.toml") && e.contains("unknown field `colour`"),
            "{e}"
        );
        let e = parse("[server]\nmax_request_bytes = 100\nmax_inflight_bytes = 99\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("max_inflight_bytes (99) must be at least max_request_bytes (100)"),
            "{e}"
        );
        let e = parse("[server]\nhttp2_stream_window_bytes = 4294967295\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be between 65535 and 2147483647"), "{e}");
        let m = parse("[server]\nmax_request_bytes = 2147483648\n").unwrap();
        assert_eq!(
            m.max_inflight_bytes(),
            2147483648,
            "at least one request of the limit"
        );
        let e = parse("[serverr]\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `serverr`"), "{e}");
        let e = parse(&format!("{}\n{}", entry(""), entry("")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model 'a' version 1 is listed twice"), "{e}");
        let e = parse(&entry("version = \"v2\"")).unwrap_err().to_string();
        assert!(e.contains("must be a non-negative integer"), "{e}");
        let e = parse("[[models]]\nname = \"a\"\nruntime = \"tract\"\npath = \"nope.onnx\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("file not found") && e.contains("nope.onnx"),
            "{e}"
        );
        let e = parse("[[models]]\nname = \"a/b\"\nruntime = \"tract\"\npath = \"models/a.onnx\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model name 'a/b'"), "{e}");
        let e = parse("[[models]]\nname = \"a\"\npath = \"models/a.onnx\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `runtime`"), "{e}");
        for (bad, needle) in [
            ("instances = 0", "instances = 0 must be between 1 and 64"),
            ("max_queue_size = 0", "max_queue_size must be at least 1"),
            (
                "max_batch_size = 8\npreferred_batch_sizes = [16]",
                "preferred batch size 16 must be between 1 and max_batch_size (8)",
            ),
            ("max_queue_delay_us = 10", "needs max_batch_size > 0"),
            ("max_batch = 8", "unknown field `max_batch`"),
        ] {
            let e = parse(&entry(&format!("[models.scheduler]\n{bad}")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let m = parse(&entry("[models.scheduler]\nmax_batch_size = 8")).unwrap();
        assert!(m.models[0].scheduler.batching());
        assert_eq!(m.models[0].scheduler.max_queue_size, 1024);
    }

    #[test]
    fn versions_are_normalised() {
        let m = parse("[[models]]\nname = \"a\"\nversion = \"007\"\nruntime = \"t\"\npath = \"models/a.onnx\"").unwrap();
        assert_eq!(m.models[0].version, "7");
    }
}
