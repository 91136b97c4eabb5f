//! The state every front end and the pipeline share: the served models, readiness, limits, the
//! inference log and the server-wide metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::budget::MemoryBudget;
use crate::models::ModelRepository;
use crate::telemetry::ServerMetrics;
use crate::telemetry::inference_log::InferenceLog;

/// Shared state of the REST and gRPC front ends. A clone is one reference count: every
/// middleware and handler of every request takes one, so it must be cheap.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] shares (its fields are read through `Deref`).
#[derive(Debug, Clone)]
pub struct Shared {
    pub(crate) repository: Arc<ModelRepository>,
    /// Cleared when the server starts shutting down (or draining), so readiness probes fail
    /// first; the gRPC health service follows it.
    pub(crate) ready: Arc<tokio::sync::watch::Sender<bool>>,
    /// The largest request body accepted, in bytes.
    pub(crate) max_request_bytes: usize,
    /// The bytes requests in flight may hold together (`[server] max_inflight_bytes`).
    pub(crate) budget: Arc<MemoryBudget>,
    pub(crate) log: Option<InferenceLog>,
    pub(crate) metrics: Arc<ServerMetrics>,
    /// What both listeners share: the transport settings (TCP_NODELAY, HTTP/2 windows, gRPC
    /// compression, connection limits), TLS (`[server.tls]`), the server-wide request limit
    /// and the connection counters.
    pub(crate) listening: Arc<crate::listen::Listening>,
    /// Access control (`[auth]`), replaced when the manifest is reloaded.
    pub(crate) access: Arc<crate::auth::Access>,
    /// Origins allowed to call the REST API from a browser (`[server] cors_origins`).
    pub(crate) cors_origins: Arc<[String]>,
    /// Repository loads in flight, by model name: a second load of the same model waits for
    /// the first one's result instead of starting its own.
    pub(crate) loads: Arc<Mutex<HashMap<String, LoadResult>>>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub use crate::listen::Transport;

/// The outcome of a repository load, once known, shared by every caller that asked for it.
pub(crate) type LoadResult = tokio::sync::watch::Receiver<Option<oxinfer_core::Result<()>>>;

impl AppState {
    /// State for a repository, ready, with the given body limit (`max_request_bytes`) and the
    /// default budget for requests in flight (1 GiB, or the body limit if larger).
    pub fn new(repository: ModelRepository, max_request_bytes: usize) -> Self {
        AppState(Arc::new(Shared {
            repository: Arc::new(repository),
            ready: Arc::new(tokio::sync::watch::Sender::new(true)),
            max_request_bytes,
            budget: MemoryBudget::new(
                oxinfer_core::manifest::DEFAULT_MAX_INFLIGHT_BYTES.max(max_request_bytes),
            ),
            log: None,
            metrics: Arc::default(),
            cors_origins: Arc::new([]),
            loads: Arc::default(),
            listening: Arc::new(crate::listen::Listening::new(Transport::default(), None)),
            access: Arc::default(),
        }))
    }

    /// The shared fields, to set while the state is being built (before it is shared).
    fn building(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }

    /// The same state, with these transport settings.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        let shared = self.building();
        shared.listening = Arc::new(crate::listen::Listening::new(
            transport,
            shared.listening.tls.clone(),
        ));
        self
    }

    /// Turns access control on with the tokens of `[auth]`, replaces them, or (`None`) turns it
    /// off; calls already admitted are not affected.
    pub fn set_auth(&self, auth: Option<&oxinfer_core::manifest::AuthSettings>) {
        self.access.set(auth.map(crate::auth::Auth::new));
    }

    /// The same state, serving TLS on both ports with `tls` (reloadable on SIGHUP through the
    /// same `Arc`).
    pub fn with_tls(mut self, tls: Arc<crate::listen::tls::Tls>) -> Self {
        let shared = self.building();
        shared.listening = Arc::new(crate::listen::Listening::new(
            shared.listening.transport,
            Some(tls),
        ));
        self
    }

    /// The same state, letting pages from these origins call the REST API (`*`: any).
    pub fn with_cors_origins(mut self, origins: Vec<String>) -> Self {
        self.building().cors_origins = origins.into();
        self
    }

    /// The same state, with a budget of `bytes` for requests in flight (`max_inflight_bytes`).
    pub fn with_inflight_budget(mut self, bytes: usize) -> Self {
        self.building().budget = MemoryBudget::new(bytes);
        self
    }

    /// The same state, writing an inference log.
    pub fn with_log(mut self, log: InferenceLog) -> Self {
        self.building().log = Some(log);
        self
    }

    /// The served models.
    pub fn repository(&self) -> &Arc<ModelRepository> {
        &self.repository
    }

    /// Whether the server accepts traffic (false once shutdown has begun).
    pub(crate) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Marks the server as shutting down (or draining): readiness probes (REST, gRPC
    /// `ServerReady`, `grpc.health.v1`) fail from now on, while requests are still served.
    pub fn set_not_ready(&self) {
        self.ready.send_replace(false);
    }

    /// Changes of readiness.
    pub(crate) fn readiness(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }
}
