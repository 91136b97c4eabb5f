//! The `oxinfer` model server binary.
//!
//! ```text
//! oxinfer serve --manifest FILE [--http ADDR] [--grpc ADDR]   serve the manifest's models
//! oxinfer check --manifest FILE                               validate and load, print signatures
//! oxinfer audit verify [--public-key K] FILE...               check an inference log's hash chain
//!                                                             (and its signed checkpoints)
//! oxinfer audit show --id ID FILE...                          print the records of one request
//! oxinfer audit keygen --private K.pem --public K.pub.pem     a key pair to sign checkpoints
//! ```

/// mimalloc instead of glibc's malloc: the request path allocates small, short-lived buffers
/// (JSON, tensors, headers), and glibc's malloc/free were ~14% of the server's CPU time under
/// load (perf, tiny model, 16 connections). Built with its `no_thp` feature: with transparent
/// huge pages, mimalloc's first regions were backed by 2 MiB pages as soon as they were touched,
/// 8 of a tiny model server's 30 MiB of RSS, for no throughput measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use opentelemetry_sdk::trace::SdkTracerProvider;
use oxinfer_core::Manifest;
use oxinfer_core::manifest::TelemetrySettings;
use oxinfer_server::{AppState, ModelRepository, RuntimeRegistry, inference_log};

/// oxinfer: a model server for the Open Inference Protocol (KServe v2).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "OXINFER_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the models (a manifest, a model repository, or one model directory) and serve them.
    Serve {
        #[command(flatten)]
        sources: Sources,
        /// HTTP listen address; overrides `[server] http`. Port 0 picks a free port.
        #[arg(long)]
        http: Option<String>,
        /// gRPC listen address; overrides `[server] grpc`. Port 0 picks a free port. Without
        /// either, gRPC is not served.
        #[arg(long)]
        grpc: Option<String>,
        /// Largest request body in bytes; overrides `[server] max_request_bytes`.
        #[arg(long)]
        max_request_bytes: Option<usize>,
        /// Seconds to keep serving with readiness false after SIGTERM / SIGINT before closing
        /// the listeners; overrides `[server] drain_seconds` (default 0).
        #[arg(long)]
        drain_seconds: Option<u64>,
        /// Poll the manifest and every model file it names, and apply changes as SIGHUP does.
        #[arg(long)]
        watch: bool,
        /// How often `--watch` polls, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        watch_interval_ms: u64,
    },
    /// Validate the manifest and load every model, print each model's inputs and outputs, and
    /// exit 0 when all is well, 1 otherwise.
    Check {
        #[command(flatten)]
        sources: Sources,
    },
    /// Work with inference logs.
    #[command(subcommand)]
    Audit(Audit),
    /// Manage access tokens (`[auth]`).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a new token: prints its secret (give it to the client; it is not stored anywhere)
    /// and the `[[auth.tokens]]` table to add to the manifest or the tokens file.
    New {
        /// The token's name: the identity recorded for its requests.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: read, infer, admin, metrics.
        #[arg(long, value_delimiter = ',', default_value = "read,infer")]
        scopes: Vec<String>,
        /// Comma-separated models the token may use (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Audit {
    /// Check the hash chain of inference log files (oldest first; rotated files sort by name),
    /// and with --public-key the signatures of its checkpoints. Exits 0 when intact (records
    /// after the last signed checkpoint, or left unsigned by an unclean stop, are a warning), 1
    /// with the first broken record or bad signature otherwise.
    Verify {
        /// An Ed25519 public key (PEM) that signs the checkpoints (`[inference_log]
        /// signing_key`); repeat it for logs signed by several keys over time.
        #[arg(long = "public-key", value_name = "PEM")]
        public_keys: Vec<PathBuf>,
        /// Exit 1 when records are not covered by a signed checkpoint (after the last one, no
        /// checkpoint at all, or left unsigned by an unclean stop and closed unverified by the
        /// restarted server): their tail may have been cut or rewritten.
        #[arg(long, requires = "public_keys")]
        require_signed: bool,
        /// Log files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Make an Ed25519 key pair to sign the inference log's checkpoints: the private key
    /// (PKCS#8 PEM, mode 0600) for `[inference_log] signing_key`, the public key (PEM) for
    /// `audit verify --public-key`. Existing files are not overwritten.
    Keygen {
        /// Where to write the private key.
        #[arg(long = "private", value_name = "PEM")]
        private: PathBuf,
        /// Where to write the public key.
        #[arg(long = "public", value_name = "PEM")]
        public: PathBuf,
    },
    /// Print the record(s) of one request.
    Show {
        /// The request id.
        #[arg(long)]
        id: String,
        /// Log files to search.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// How often the TLS files are checked for changes.
const TLS_POLL: Duration = Duration::from_secs(10);

/// The address used when neither the command line nor the manifest gives one.
const DEFAULT_HTTP: &str = "127.0.0.1:8080";

fn registry() -> RuntimeRegistry {
    let mut registry = RuntimeRegistry::new();
    #[cfg(feature = "tract")]
    registry.register(Arc::new(oxinfer_tract::TractRuntime));
    #[cfg(feature = "onnxruntime")]
    registry.register(Arc::new(oxinfer_onnxruntime::OrtRuntime));
    #[cfg(feature = "candle")]
    registry.register(Arc::new(oxinfer_candle::CandleRuntime));
    #[cfg(feature = "plugin")]
    registry.register(Arc::new(oxinfer_plugin_host::PluginRuntime));
    registry
}

/// Logs to stderr (text or JSON) with `OXINFER_LOG` as the filter, and, when the manifest has a
/// `[telemetry]` section, exports request spans over OTLP/HTTP. Returns the tracer provider to
/// flush at exit.
fn init_logging(
    format: LogFormat,
    telemetry: Option<&TelemetrySettings>,
) -> Result<Option<SdkTracerProvider>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("OXINFER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let (otel, provider) = match telemetry {
        None => (None, None),
        Some(settings) => {
            use opentelemetry::trace::TracerProvider as _;
            use opentelemetry_otlp::WithExportConfig;
            let endpoint = format!("{}/v1/traces", settings.otlp_endpoint.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(&endpoint)
                .build()
                .with_context(|| format!("cannot set up OTLP export to {endpoint}"))?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(
                    settings
                        .service_name
                        .clone()
                        .unwrap_or_else(|| "oxinfer".into()),
                )
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            // The per-request `infer` spans are at debug level, so that they cost nothing when
            // nobody exports them.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("oxinfer"))
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("oxinfer_server", tracing::Level::DEBUG)
                        .with_default(tracing::Level::INFO),
                );
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    if let Some(settings) = telemetry {
        tracing::info!(endpoint = %settings.otlp_endpoint, "exporting request spans over OTLP");
    }
    Ok(provider)
}

/// Where the models come from: a manifest, a Triton-style model repository, the single-model
/// form (KServe mounts a model at `/mnt/models`), or a manifest with either beside it.
#[derive(Debug, Clone, clap::Args)]
struct Sources {
    /// The manifest (TOML) listing the models to serve and the server settings.
    #[arg(long, short, required_unless_present_any = ["model_repository", "model_dir"])]
    manifest: Option<PathBuf>,
    /// A model repository: DIR/MODEL/VERSION/FILE, with an optional DIR/MODEL/model.toml.
    #[arg(long, value_name = "DIR")]
    model_repository: Option<PathBuf>,
    /// One model (a file, a model directory, or a directory of versions), served under
    /// --model-name.
    #[arg(long, value_name = "PATH", requires = "model_name")]
    model_dir: Option<PathBuf>,
    /// The name to serve --model-dir under.
    #[arg(long, requires = "model_dir")]
    model_name: Option<String>,
    /// Never touch the network: models named by URI (`models:/`, `s3://`, `https://`) are
    /// served from the model cache, or fail to load (`check` skips them). As `[sources]
    /// offline = true`.
    #[arg(long, env = "OXINFER_OFFLINE")]
    offline: bool,
}

impl Sources {
    /// The manifest with the models of the repository and model directory added.
    fn load(&self) -> Result<Manifest> {
        let mut manifest = match &self.manifest {
            Some(path) => Manifest::load(path)?,
            None => {
                let dir = self
                    .model_repository
                    .as_ref()
                    .or(self.model_dir.as_ref())
                    .map(|p| p.join("(command line)"))
                    .unwrap_or_default();
                Manifest::parse("", &dir)?
            }
        };
        if let Some(dir) = &self.model_repository {
            manifest.extend(oxinfer_core::layout::repository_entries(
                dir,
                &detect_runtime,
            )?)?;
        }
        if let (Some(path), Some(name)) = (&self.model_dir, &self.model_name) {
            let config = if path.is_dir() {
                path.join("model.toml")
            } else {
                path.with_file_name("model.toml")
            };
            let table = if config.is_file() {
                let text = std::fs::read_to_string(&config)
                    .with_context(|| format!("cannot read {}", config.display()))?;
                toml::from_str(&text).with_context(|| format!("{}", config.display()))?
            } else {
                toml::Table::new()
            };
            manifest.extend(oxinfer_core::layout::model_entries(
                name,
                path,
                table,
                &config,
                &detect_runtime,
            )?)?;
        }
        if self.offline {
            manifest.sources.offline = true;
        }
        Ok(manifest)
    }

    /// What `--watch` polls besides the model files: the manifest and the directories.
    fn watched(&self) -> Vec<PathBuf> {
        [&self.manifest, &self.model_repository, &self.model_dir]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// For messages.
    fn describe(&self) -> String {
        self.watched()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

/// The runtime for a model given without one: a candle directory (`model.safetensors` and
/// `tokenizer.json`), an `.onnx` file (ONNX Runtime when its library is found, else tract), or
/// a shared library (a plugin).
fn detect_runtime(path: &Path) -> Option<&'static str> {
    if path.is_dir() {
        return (path.join("model.safetensors").is_file() && path.join("tokenizer.json").is_file())
            .then_some("candle");
    }
    match path.extension()?.to_str()? {
        "onnx" => {
            #[cfg(feature = "onnxruntime")]
            if oxinfer_onnxruntime::find_library(None).is_ok() {
                return Some("onnxruntime");
            }
            Some("tract")
        }
        "so" | "dylib" | "dll" => Some("plugin"),
        _ => None,
    }
}

fn load(manifest: &Manifest) -> Result<ModelRepository> {
    let started = Instant::now();
    let repository = ModelRepository::load(registry(), manifest.clone())?;
    tracing::info!(
        models = repository.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        manifest = %manifest.source.display(),
        "all models loaded"
    );
    Ok(repository)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Every HTTPS client in the process (model sources, the OTLP exporter) uses ring.
    oxinfer_sources::install_crypto_provider();
    // `serve` reads the manifest first: its [telemetry] section shapes the logging set-up.
    let telemetry = match &cli.command {
        Command::Serve { sources, .. } => match sources.load() {
            Ok(m) => m.telemetry,
            Err(e) => {
                eprintln!("error: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let provider = match init_logging(cli.log_format, telemetry.as_ref()) {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = run(cli.command);
    if let Some(provider) = provider
        && let Err(e) = provider.shutdown()
    {
        eprintln!("warning: flushing OTLP spans failed: {e}");
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Audit(Audit::Verify {
            public_keys,
            require_signed,
            files,
        }) => audit_verify(&files, &public_keys, require_signed),
        Command::Audit(Audit::Keygen { private, public }) => {
            let key = inference_log::keygen(&private, &public).map_err(anyhow::Error::msg)?;
            println!(
                "private key: {} (mode 0600; keep it secret; name it in [inference_log] \
                 signing_key)",
                private.display()
            );
            println!(
                "public key:  {} (for oxinfer audit verify --public-key)",
                public.display()
            );
            println!("key id:      {}", key.id());
            Ok(())
        }
        Command::Audit(Audit::Show { id, files }) => {
            let found = inference_log::find(&files, &id).map_err(anyhow::Error::msg)?;
            if found.is_empty() {
                anyhow::bail!("no record with request_id {id}");
            }
            for (at, line) in found {
                println!("{at}\n{line}");
            }
            Ok(())
        }
        Command::Token(TokenCommand::New {
            name,
            scopes,
            models,
        }) => new_token(&name, &scopes, &models),
        Command::Check { sources } => check(&sources),
        Command::Serve {
            sources,
            http,
            grpc,
            max_request_bytes,
            drain_seconds,
            watch,
            watch_interval_ms,
        } => serve(
            &sources,
            Listen {
                http,
                grpc,
                max_request_bytes,
                drain_seconds,
                watch: watch.then(|| Duration::from_millis(watch_interval_ms.max(100))),
            },
        ),
    }
}

/// `oxinfer audit verify`: the chain, then the checkpoints' signatures when keys are given.
/// Loose file permissions and unsigned records are warnings (stderr); a broken chain, a bad
/// signature, and with `require_signed` unsigned records, are errors.
fn audit_verify(files: &[PathBuf], public_keys: &[PathBuf], require_signed: bool) -> Result<()> {
    for file in files {
        if let Some(mode) = inference_log::loose_permissions(file) {
            eprintln!(
                "warning: {} is readable or writable by group or others (mode {mode:04o}); an \
                 inference log should be 0600 (chmod 600 {})",
                file.display(),
                file.display()
            );
        }
    }
    let keys = public_keys
        .iter()
        .map(|path| inference_log::PublicKey::load(path))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let verified = inference_log::verify(files, &keys).map_err(anyhow::Error::msg)?;
    let checkpoints = match verified.checkpoints {
        0 => String::new(),
        n => format!(" and {n} checkpoint(s)"),
    };
    println!(
        "OK: {} record(s){checkpoints} intact; chain starts from {} and ends at {}",
        verified.records, verified.starts_from, verified.last_hash
    );
    if verified.starts_from == inference_log::GENESIS {
        println!("the chain starts with the log's first record ever");
    } else {
        // Not an error: retention deletes the oldest files. A record removed inside the files
        // given breaks the chain instead, and fails above.
        println!(
            "the chain does not start with the log's first record: the records before it are \
             in files not given here, or were deleted by retention (retention_files)"
        );
    }
    if !verified.signatures_checked {
        if verified.checkpoints > 0 {
            println!(
                "{} checkpoint(s) in the chain; their signatures were not checked (give \
                 --public-key)",
                verified.checkpoints
            );
        }
        return Ok(());
    }
    let Some(last) = &verified.last_checkpoint else {
        let message = format!(
            "no signed checkpoint in these files: none of the {} record(s) is signed (is \
             [inference_log] signing_key set?)",
            verified.records
        );
        if require_signed {
            anyhow::bail!("{message} (--require-signed)");
        }
        eprintln!("warning: {message}");
        return Ok(());
    };
    println!(
        "signatures: {} checkpoint(s) verified with key {}",
        verified.checkpoints,
        verified.key_ids.join(", key ")
    );
    for stop in &verified.recovered {
        println!(
            "unclean stop: the server restarted after an unclean stop (recovered checkpoint {}, \
             {}); {} record(s) written before it were left unsigned",
            stop.at, stop.timestamp, stop.unverified
        );
    }
    let covered = verified.records - verified.unsigned_tail - verified.unvouched;
    let ended = match last.reason {
        inference_log::Reason::Shutdown => "was written at shutdown".to_string(),
        inference_log::Reason::Recovered => "was written at a restart after an unclean stop, \
             not at shutdown: the server was still running or did not stop cleanly again, or \
             the records after it were cut off"
            .to_string(),
        reason => format!(
            "is a periodic one (reason {reason}), not a shutdown checkpoint: the server was still \
             running or did not stop cleanly, or the records after it were cut off"
        ),
    };
    let mut unsigned = Vec::new();
    if verified.unvouched > 0 {
        let at = verified
            .recovered
            .iter()
            .filter(|stop| stop.unverified > 0)
            .map(|stop| format!("{} ({})", stop.at, stop.timestamp))
            .collect::<Vec<_>>()
            .join(", ");
        unsigned.push(format!(
            "{} record(s) are not vouched for by a signature (the server stopped uncleanly \
             before signing them); recovered checkpoint(s): {at}",
            verified.unvouched
        ));
    }
    if verified.unsigned_tail > 0 {
        unsigned.push(format!(
            "{} record(s) after the last signed checkpoint are not signed (written after it, or \
             the tail was cut); the last checkpoint is {} ({})",
            verified.unsigned_tail, last.at, last.timestamp
        ));
    }
    if require_signed && !unsigned.is_empty() {
        anyhow::bail!("{} (--require-signed)", unsigned.join("; "));
    }
    for message in &unsigned {
        eprintln!("warning: {message}");
    }
    if unsigned.is_empty() {
        println!("all {covered} record(s) are covered by signed checkpoints");
    } else {
        println!("{covered} record(s) are covered by signed checkpoints");
    }
    println!(
        "the last checkpoint ({}, {}) {ended}",
        last.at, last.timestamp
    );
    Ok(())
}

/// `oxinfer token new`: a random secret and the table that declares it, checked as the
/// manifest would check it.
fn new_token(name: &str, scopes: &[String], models: &[String]) -> Result<()> {
    let (secret, sha256) = oxinfer_server::new_token().context("cannot make a random secret")?;
    let quoted = |items: &[String]| {
        items
            .iter()
            .map(|s| format!("{:?}", s.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut table = format!(
        "[[auth.tokens]]\nname = {name:?}\nsha256 = \"{sha256}\"\nscopes = [{}]\n",
        quoted(scopes)
    );
    if !models.is_empty() {
        table.push_str(&format!("models = [{}]\n", quoted(models)));
    }
    // The same checks as a manifest holding it.
    Manifest::parse(&table, Path::new("(oxinfer token new)"))?;
    println!("# The secret, for the client (Authorization: Bearer <secret>); shown only now:");
    println!("# {secret}");
    println!("{table}");
    Ok(())
}

/// The TLS configuration of `[server.tls]`, read and checked (the error names the file).
fn tls(manifest: &Manifest) -> Result<Option<Arc<oxinfer_server::Tls>>> {
    manifest
        .server
        .tls
        .as_ref()
        .map(|settings| {
            oxinfer_server::Tls::load(settings)
                .map(Arc::new)
                .map_err(anyhow::Error::msg)
        })
        .transpose()
}

fn check(sources: &Sources) -> Result<()> {
    let manifest = sources.load()?;
    if let Some(tls) = tls(&manifest)? {
        println!(
            "TLS on both ports{}",
            if tls.mutual() {
                ", client certificates required"
            } else {
                ""
            }
        );
    }
    if let Some(auth) = &manifest.auth {
        println!(
            "access control on: {} token(s){}",
            auth.tokens.len(),
            if auth.protect_health {
                ", probes protected"
            } else {
                ""
            }
        );
    }
    if let Some(log) = &manifest.inference_log
        && let Some(key) = inference_log::load_signing_key(log)?
    {
        println!("inference log checkpoints signed by key {}", key.id());
    }
    let mut manifest = manifest;
    if manifest.sources.offline && manifest.models.iter().any(|e| e.uri.is_some()) {
        let sources = oxinfer_sources::ModelSources::new(
            &manifest.sources,
            manifest.server.model_cache.as_deref(),
        )?;
        manifest.models.retain(|entry| {
            let Some(uri) = &entry.uri else { return true };
            let cached = sources.cached(entry).is_some();
            if !cached {
                println!(
                    "{entry}: {uri} skipped (--offline, and the model cache {} holds nothing \
                     for it)",
                    sources.cache_dir().display()
                );
            }
            cached
        });
    }
    let repository = load(&manifest)?;
    for model in repository.ready_models() {
        println!(
            "{} (version {}, {}):",
            model.name, model.version, model.entry.runtime
        );
        if let Some(uri) = &model.entry.uri {
            let provenance = &model.entry.provenance;
            println!(
                "  source {uri}{}{}, sha256 {}{}",
                provenance
                    .registry_version
                    .as_ref()
                    .map(|v| format!(": registry version {v}"))
                    .unwrap_or_default(),
                provenance
                    .artifact_location
                    .as_ref()
                    .map(|l| format!(" from {l}"))
                    .unwrap_or_default(),
                model.sha256,
                if manifest.sources.offline {
                    " (not contacted: --offline; from the model cache)"
                } else {
                    ""
                }
            );
        }
        let signature = model.signature();
        for (kind, tensors) in [("input", &signature.inputs), ("output", &signature.outputs)] {
            for t in tensors {
                println!(
                    "  {kind:<6} {:<24} {:<6} {:?}",
                    t.name,
                    t.datatype.as_str(),
                    t.shape
                );
            }
        }
    }
    println!("{}: OK, {} model(s)", sources.describe(), repository.len());
    Ok(())
}

/// Binds a listener before any model is loaded, so that a port in use fails at once and says
/// which listener and which option moves it.
fn bind(addr: SocketAddr, what: &str, option: &str) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!(
            "cannot listen on {addr} ({what}); is another server using it? Choose another address \
             with {option}"
        )
    })?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot set up the {what} listener"))?;
    Ok(listener)
}

/// The command-line settings of `serve`, over the manifest's.
struct Listen {
    http: Option<String>,
    grpc: Option<String>,
    max_request_bytes: Option<usize>,
    drain_seconds: Option<u64>,
    /// Poll for changes this often (`--watch`).
    watch: Option<Duration>,
}

fn serve(sources: &Sources, listen: Listen) -> Result<()> {
    let Listen {
        http,
        grpc,
        max_request_bytes,
        drain_seconds,
        watch,
    } = listen;
    let manifest = sources.load()?;
    let drain = Duration::from_secs(drain_seconds.unwrap_or(manifest.server.drain_seconds));
    let http = http
        .or(manifest.server.http.clone())
        .unwrap_or_else(|| DEFAULT_HTTP.to_string());
    let http: SocketAddr = http
        .parse()
        .with_context(|| format!("invalid HTTP listen address '{http}'"))?;
    let grpc: Option<SocketAddr> = grpc
        .or(manifest.server.grpc.clone())
        .map(|g| {
            g.parse()
                .with_context(|| format!("invalid gRPC listen address '{g}'"))
        })
        .transpose()?;
    // Bind every listener before loading models or announcing any address, so that a port in
    // use fails startup at once, before a client is told where to connect.
    let http_listener = bind(http, "HTTP", "--http or [server] http")?;
    let grpc_listener = grpc
        .map(|addr| bind(addr, "gRPC", "--grpc or [server] grpc"))
        .transpose()?;
    let max_request_bytes = max_request_bytes.unwrap_or(manifest.max_request_bytes());
    // Unset, the budget follows a --max-request-bytes above 1 GiB as it follows the manifest's.
    let max_inflight_bytes = manifest
        .server
        .max_inflight_bytes
        .unwrap_or(manifest.max_inflight_bytes().max(max_request_bytes));
    if max_inflight_bytes < max_request_bytes {
        anyhow::bail!(
            "max_inflight_bytes ({max_inflight_bytes}) must be at least max_request_bytes \
             ({max_request_bytes}), or no request of the largest size could ever be served"
        );
    }
    let tls = tls(&manifest)?;
    let repository = load(&manifest)?;
    let shutdown_timeout = manifest.server.shutdown_timeout_seconds;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut state = AppState::new(repository, max_request_bytes)
        .with_inflight_budget(max_inflight_bytes)
        .with_transport(oxinfer_server::Transport::of(&manifest.server))
        .with_cors_origins(manifest.server.cors_origins.clone());
    let log = match manifest.inference_log.clone() {
        Some(settings) => Some(inference_log::InferenceLog::start(settings)?),
        None => None,
    };
    if let Some(log) = &log {
        state = state.with_log(log.clone());
    }
    if let Some(tls) = &tls {
        state = state.with_tls(tls.clone());
    }
    state.set_auth(manifest.auth.as_ref());
    if let Some(auth) = &manifest.auth {
        tracing::info!(tokens = auth.tokens.len(), "access control on ([auth])");
    }
    runtime.block_on(async move {
        let http_listener = tokio::net::TcpListener::from_std(http_listener)?;
        let grpc_listener = grpc_listener
            .map(tokio::net::TcpListener::from_std)
            .transpose()?;
        // Every signal is listened for before the addresses are announced: a signal sent as
        // soon as the server is up must not find the default action (termination) in place.
        let mut signals = Signals::listen()?;
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        tracing::info!("HTTP listening on {}", http_listener.local_addr()?);
        if let Some(listener) = &grpc_listener {
            tracing::info!("gRPC listening on {}", listener.local_addr()?);
        }
        // SIGHUP (and --watch) re-read the manifest and apply the difference.
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel::<ReloadAsk>(4);
        tokio::spawn(reloads(sources.clone(), state.clone(), reload_rx));
        #[cfg(unix)]
        {
            let tx = reload_tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    // Rotated certificates (same paths, new files) serve new connections.
                    if let Some(tls) = &tls {
                        match tls.reload() {
                            Ok(()) => tracing::info!("SIGHUP: TLS certificates re-read"),
                            Err(e) => tracing::error!(
                                "SIGHUP: TLS certificates not re-read, the previous ones stay: {e}"
                            ),
                        }
                    }
                    let _ = tx.send(("SIGHUP", None)).await;
                }
            });
        }
        // Certificates renewed in place (a Kubernetes Secret volume, cert-manager) are picked
        // up without a signal.
        if let Some(tls) = tls.clone() {
            tokio::spawn(async move {
                let mut every = tokio::time::interval(TLS_POLL);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let tls = tls.clone();
                    let changed = tokio::task::spawn_blocking(move || tls.reload_if_changed())
                        .await
                        .ok()
                        .flatten();
                    match changed {
                        Some(Ok(())) => {
                            tracing::info!("TLS certificate files changed: re-read")
                        }
                        Some(Err(e)) => tracing::error!(
                            "TLS certificate files changed but cannot be used, the previous \
                             ones stay: {e}"
                        ),
                        None => {}
                    }
                }
            });
        }
        if let Some(interval) = watch {
            tokio::spawn(watch_files(
                sources.clone(),
                state.repository().clone(),
                interval,
                reload_tx,
            ));
        }
        // One signal stops both listeners, after the drain window: readiness false at once,
        // requests still served until the window ends (or a second signal ends it).
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let draining = state.clone();
        tokio::spawn(async move {
            signals.next().await;
            draining.set_not_ready();
            if !drain.is_zero() {
                tracing::info!(
                    "draining for {}s (drain_seconds): readiness is false, requests are still \
                     served; a second signal stops now",
                    drain.as_secs()
                );
                tokio::select! {
                    () = tokio::time::sleep(drain) => {}
                    () = signals.next() => tracing::info!("second signal: ending the drain window"),
                }
            }
            let _ = stop.send(true);
        });
        let wait = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let http_server = oxinfer_server::serve_http(http_listener, state.clone(), wait());
        let grpc_server = async {
            match grpc_listener {
                Some(listener) => oxinfer_server::serve_grpc(listener, state.clone(), wait())
                    .await
                    .context("gRPC server failed"),
                None => Ok(()),
            }
        };
        // After the signal, connections get `shutdown_timeout_seconds` to finish; whatever is
        // still open then (a half-sent request, an idle HTTP/2 client) is closed.
        let grace = Duration::from_secs(shutdown_timeout);
        let deadline = {
            let stopped = wait();
            async move {
                stopped.await;
                tokio::time::sleep(grace).await;
            }
        };
        let (http_result, grpc_result) = tokio::select! {
            results = async { tokio::join!(http_server, grpc_server) } => results,
            () = deadline => {
                tracing::warn!(
                    "connections still open {}s after the shutdown signal \
                     (shutdown_timeout_seconds): closing them",
                    grace.as_secs()
                );
                (Ok(()), Ok(()))
            }
        };
        if let Some(log) = &log {
            // Every request has finished: write out what is queued before exiting.
            log.shutdown().await;
            tracing::info!("inference log flushed");
        }
        http_result.context("HTTP server failed")?;
        grpc_result?;
        tracing::info!("stopped");
        Ok::<(), anyhow::Error>(())
    })?;
    // Connection tasks the deadline cut short are dropped here, without waiting for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Why a reload is asked for, and (for `--watch`) where to send the fingerprint of the files
/// it read.
type ReloadAsk = (
    &'static str,
    Option<tokio::sync::oneshot::Sender<Fingerprint>>,
);

/// Applies the manifest again each time it is asked to (SIGHUP, `--watch`), one at a time.
async fn reloads(
    sources: Sources,
    state: AppState,
    mut asks: tokio::sync::mpsc::Receiver<ReloadAsk>,
) {
    while let Some((why, reply)) = asks.recv().await {
        let sources = sources.clone();
        let state = state.clone();
        if let Ok(read) = tokio::task::spawn_blocking(move || reload(&sources, &state, why)).await
            && let Some(reply) = reply
        {
            let _ = reply.send(read);
        }
    }
}

/// Re-reads the manifest and applies it; a manifest that fails to parse or check changes
/// nothing. Returns the fingerprint of the files as they were when read (taken before the
/// models are loaded, so that a file that changes meanwhile is seen as changed).
fn reload(sources: &Sources, state: &AppState, why: &str) -> Fingerprint {
    let repository = state.repository();
    tracing::info!("{why}: reloading {}", sources.describe());
    let manifest = match sources.load() {
        Ok(manifest) => manifest,
        Err(e) => {
            repository.count_refused_reload();
            tracing::error!("manifest reload refused, nothing changed: {e:#}");
            return fingerprint(sources, &repository.manifest());
        }
    };
    // The tokens of [auth] (and its tokens_file) apply from the next call on.
    state.set_auth(manifest.auth.as_ref());
    let read = fingerprint(sources, &manifest);
    let report = repository.apply(manifest);
    for setting in &report.needs_restart {
        tracing::warn!(
            "manifest reload: {setting} changed; it needs a restart and is left as it was"
        );
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(" ")
        }
    };
    let summary = format!(
        "added: {}, changed: {}, removed: {}, unchanged: {}",
        list(&report.added),
        list(&report.changed),
        list(&report.removed),
        report.unchanged
    );
    if report.complete() {
        tracing::info!("manifest reloaded: {summary}");
    } else {
        tracing::error!(
            "manifest reloaded with failures ({} kept their previous state): {summary}",
            report.failed.len()
        );
    }
    read
}

/// What `--watch` compares: the manifest's and every model file's size and modification time.
type Fingerprint = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

/// The [`Fingerprint`] of the manifest, the model directories and the model files named.
fn fingerprint(sources: &Sources, manifest: &Manifest) -> Fingerprint {
    let mut seen = Vec::new();
    let mut stack: Vec<PathBuf> = sources
        .watched()
        .into_iter()
        .chain(
            manifest
                .models
                .iter()
                .filter(|e| e.uri.is_none())
                .map(|e| e.path.clone()),
        )
        .chain(
            manifest
                .models
                .iter()
                .filter_map(|e| e.versions_dir.clone()),
        )
        .collect();
    stack.sort();
    stack.dedup();
    while let Some(p) = stack.pop() {
        if seen.len() >= 100_000 {
            break;
        }
        match std::fs::metadata(&p) {
            Ok(meta) if meta.is_dir() => {
                if let Ok(entries) = std::fs::read_dir(&p) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
            }
            Ok(meta) => seen.push((p, meta.len(), meta.modified().ok())),
            Err(_) => seen.push((p, 0, None)),
        }
    }
    seen.sort();
    seen
}

/// Polls the manifest and its model files; asks for a reload when any changed.
async fn watch_files(
    sources: Sources,
    repository: Arc<ModelRepository>,
    interval: Duration,
    asks: tokio::sync::mpsc::Sender<ReloadAsk>,
) {
    let take = |sources: Sources, repository: Arc<ModelRepository>| {
        tokio::task::spawn_blocking(move || fingerprint(&sources, &repository.manifest()))
    };
    let Ok(mut last) = take(sources.clone(), repository.clone()).await else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let Ok(now) = take(sources.clone(), repository.clone()).await else {
            return;
        };
        if now != last {
            // The files as the reload read them: one that changes later (a file still being
            // written) is seen as changed again.
            let (reply, read) = tokio::sync::oneshot::channel();
            if asks
                .send(("a watched file changed", Some(reply)))
                .await
                .is_err()
            {
                return;
            }
            let Ok(read) = read.await else { return };
            last = read;
        }
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from creation on.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Completes on the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => tracing::info!("received SIGINT"),
            _ = self.term.recv() => tracing::info!("received SIGTERM"),
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("received Ctrl-C");
        }
    }
}
