//! `[auth]` for the gRPC port: a tower layer that checks the `authorization` metadata against
//! what the method needs before anything of the message is read (so an unauthenticated caller
//! holds no budget), answers `UNAUTHENTICATED` / `PERMISSION_DENIED`, and puts the token's
//! [`Grant`] in the call's extensions. The handlers check the model the message names.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http;
use oxinfer_core::manifest::Scope;

use crate::auth::Need;
use crate::listen::{Caller, Identity};
use crate::state::AppState;

/// What a gRPC method needs.
fn need(path: &str) -> Need {
    if crate::listen::is_grpc_probe(path) {
        return Need::Health;
    }
    let method = path
        .strip_prefix("/inference.GRPCInferenceService/")
        .unwrap_or_default();
    match method {
        "ModelInfer" | "ModelStreamInfer" => Need::Scope(Scope::Infer),
        "ServerMetadata" | "ModelMetadata" | "ModelReady" | "ModelConfig" | "ModelStatistics" => {
            Need::Scope(Scope::Read)
        }
        // The repository, and any management call (Triton's trace, log and shared-memory
        // extensions) or method that does not exist.
        _ => Need::Scope(Scope::Admin),
    }
}

/// The layer; see the module documentation.
#[derive(Clone)]
pub(super) struct AccessLayer {
    pub(super) state: AppState,
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Checked<S>;

    fn layer(&self, inner: S) -> Checked<S> {
        Checked {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service [`AccessLayer`] makes.
#[derive(Clone)]
pub(super) struct Checked<S> {
    inner: S,
    state: AppState,
}

impl<S, B> tower::Service<http::Request<B>> for Checked<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let client = Caller::of(request.extensions()).addr;
        let checked = self.state.access.check(
            request.headers().get(http::header::AUTHORIZATION),
            need(path),
            client,
            &path.rsplit('/').next().unwrap_or(path),
        );
        match checked {
            Ok(Some(grant)) => {
                let extensions = request.extensions_mut();
                extensions.insert(Identity(grant.name.clone()));
                extensions.insert(grant);
            }
            Ok(None) => {}
            Err(denied) => {
                return Box::pin(std::future::ready(Ok(denied.status().into_http())));
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_needs_its_scope() {
        let service = "/inference.GRPCInferenceService/";
        for (method, want) in [
            ("ServerLive", Need::Health),
            ("ServerReady", Need::Health),
            ("ModelInfer", Need::Scope(Scope::Infer)),
            ("ModelStreamInfer", Need::Scope(Scope::Infer)),
            ("ModelMetadata", Need::Scope(Scope::Read)),
            ("ModelReady", Need::Scope(Scope::Read)),
            ("ModelStatistics", Need::Scope(Scope::Read)),
            ("RepositoryModelLoad", Need::Scope(Scope::Admin)),
            ("RepositoryIndex", Need::Scope(Scope::Admin)),
            ("TraceSetting", Need::Scope(Scope::Admin)),
        ] {
            assert_eq!(need(&format!("{service}{method}")), want, "{method}");
        }
        assert_eq!(need("/grpc.health.v1.Health/Check"), Need::Health);
        assert_eq!(need("/other.Service/Call"), Need::Scope(Scope::Admin));
    }
}
