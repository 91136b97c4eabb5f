//! oxinfer's serving layer: the models being served, the request path shared by every protocol,
//! and the REST and gRPC front ends. The modules, in the order a request meets them:
//!
//! - `api`: the front ends: `api::rest` (axum) and `api::grpc` (tonic), which decode the wire
//!   format and call the pipeline or an admin operation;
//! - `pipeline`: request id, model lookup, validation against the model's signature, response
//!   assembly, and recording the request;
//! - `scheduler`: each model's bounded queue, worker threads, dynamic batching and deadlines;
//! - `admin`: metadata, readiness, statistics and the repository operations, once for both
//!   front ends;
//! - `models`: the runtime registry, loading manifest entries, digests, the repository of
//!   loaded versions, the Triton model configuration;
//! - `telemetry`: statistics and Prometheus metrics (one recorder, two views), and the
//!   [`inference_log`];
//! - `state`: the [`AppState`] the front ends and the pipeline share;
//! - `auth`: access control (`[auth]`): bearer tokens, scopes, the models a token may use;
//! - `listen`: accepting connections on both ports: TLS, connection timeouts,
//!   `max_connections` and `max_concurrent_requests`;
//! - `budget`: the process-wide budget of bytes held by requests in flight, which every
//!   inference request reserves against from its first byte to its log record;
//! - `heap`: giving the C heap's free pages back after models load or unload.
//!
//! The binary (`crates/oxinfer`) builds a [`ModelRepository`] from a manifest with a
//! [`RuntimeRegistry`] of the runtimes compiled in, wraps it in an [`AppState`], and runs
//! [`serve_http`] and [`serve_grpc`] until a shutdown signal.

mod admin;
mod api;
mod auth;
mod budget;
mod heap;
mod listen;
mod models;
mod pipeline;
mod scheduler;
mod state;
mod telemetry;

pub use api::grpc::pb;
pub use api::grpc::serve_grpc;
pub use api::rest::{FrontDoor, RestApp, app};
pub use auth::new_token;
pub use listen::Transport;
pub use listen::tls::Tls;
pub use models::{ModelRepository, ReloadReport, RuntimeRegistry, ServedModel};
pub use state::AppState;
pub use telemetry::inference_log;

use std::future::Future;

/// Serves the REST API on `listener` until `shutdown` completes, then stops accepting
/// connections, lets in-flight requests finish, and returns. Connections live under the
/// limits of `[server]` (timeouts, `max_connections`, `max_concurrent_requests`) and TLS
/// when `[server.tls]` is set.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listening = state.listening.clone();
    let router = app(state.clone());
    listen::serve_rest(listener, listening, router, shutdown, move || {
        state.set_not_ready();
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
    })
    .await
}
