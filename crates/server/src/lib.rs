//! oxinfer's serving layer: the model repository, the request pipeline and the OIP REST API.
//!
//! - [`loader`]: the runtimes compiled in, and loading a manifest's models;
//! - [`repository`]: the loaded models by name and version;
//! - [`pipeline`]: validate -> execute -> assemble, shared by every protocol front end;
//! - [`scheduler`]: per-model queue, worker threads, dynamic batching, deadlines;
//! - [`http`]: the REST routes (axum), tested without a socket;
//! - [`grpc`]: the gRPC service (tonic) and the standard health service;
//! - [`serve_http`] / [`grpc::serve_grpc`]: run them on a listener until a shutdown signal.

pub mod audit;
pub mod config;
pub mod grpc;
pub mod http;
pub mod loader;
pub mod metrics;
pub mod pipeline;
pub mod repository;
pub mod scheduler;
pub mod stats;

use std::future::Future;
use std::sync::atomic::Ordering;

pub use http::{AppState, app};
pub use loader::RuntimeRegistry;
pub use repository::{ModelRepository, ServedModel};

/// Serves the REST API on `listener` until `shutdown` completes, then stops accepting
/// connections, lets in-flight requests finish, and returns.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let ready = state.ready.clone();
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        ready.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
    })
    .await
}
