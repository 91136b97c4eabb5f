//! The OIP gRPC API (`inference.GRPCInferenceService`, tonic), with Triton's extensions, on its
//! own listener, beside the standard `grpc.health.v1` service. Requests are decoded
//! ([`codec`]) into the same [`InferRequest`](oxinfer_core::protocol::InferRequest) as REST and
//! run through the same [`pipeline::handle`]; the other operations are [`admin`]'s, so a model
//! behaves identically through both front ends.

mod access;
mod admission;
mod codec;
mod tail;

use std::pin::Pin;

use oxinfer_core::{Error, ErrorCode};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::admin;
use crate::auth::Grant;
use crate::pipeline;
use crate::state::AppState;
use crate::telemetry::Protocol;
use codec::version;

/// The code generated from `proto/inference.proto` (package `inference`); with the cargo feature
/// `grpc-client`, the client too (for the benchmark tools).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

pub(crate) use admission::AdmissionCodec;

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// Maps an oxinfer error to a gRPC status, following Triton's mapping.
fn status(e: Error) -> Status {
    let code = match e.code() {
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::ResourceExhausted | ErrorCode::OverBudget => tonic::Code::ResourceExhausted,
        ErrorCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorCode::Internal => {
            tracing::warn!("gRPC request failed: {e}");
            tonic::Code::Internal
        }
    };
    Status::new(code, e.to_string())
}

/// The gRPC service over the shared server state.
#[derive(Debug, Clone)]
struct GrpcService {
    state: AppState,
}

impl GrpcService {
    fn lookup(
        &self,
        name: &str,
        v: &str,
    ) -> Result<std::sync::Arc<crate::models::ServedModel>, Status> {
        self.state.repository.get(name, version(v)).map_err(status)
    }

    /// Refuses a model the caller's token may not use (`[auth]`), before any lookup: the
    /// refusal says nothing about whether the model exists.
    fn allowed(
        &self,
        extensions: &tonic::Extensions,
        model: &str,
        what: &str,
    ) -> Result<(), Status> {
        let grant = extensions.get::<Grant>();
        let client = crate::listen::Caller::of(extensions).addr;
        self.state
            .access
            .check_model(grant, model, client, &what)
            .map_err(|denied| denied.status())
    }

    /// Runs one decoded message, given what the codec decided about it ([`admission`]).
    async fn infer(
        &self,
        mut request: pb::ModelInferRequest,
        verdict: Option<admission::Verdict>,
        caller: crate::listen::Caller,
    ) -> (String, Result<pb::ModelInferResponse, Error>) {
        // Taken out, not copied: decoding reads neither the names nor the id, which goes back
        // into the decoded request below.
        let model = std::mem::take(&mut request.model_name);
        let model_version = std::mem::take(&mut request.model_version);
        let request_id = Some(std::mem::take(&mut request.id)).filter(|id| !id.is_empty());
        // As over REST: nothing is decoded for a model that is not served, and each input is
        // checked against the model before its contents are (by the codec, before prost
        // decodes them, and again here).
        let (held, refused, admitted) = match verdict {
            Some(admission::Verdict::Admitted(held, served)) => (Some(held), None, Some(served)),
            Some(admission::Verdict::Refused(e)) => (None, Some(e), None),
            None => (None, None, None),
        };
        // The model the codec found for this message (by the same name and version: the same
        // fields, read the same way; checked here), else a lookup.
        let target = match admitted {
            Some(served)
                if served.name == model
                    && version(&model_version).is_none_or(|v| v == served.version) =>
            {
                Ok(served)
            }
            _ => self.state.repository.get(&model, version(&model_version)),
        };
        let mut decoded = match (&target, refused) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(e.clone()),
            (Ok(served), None) => codec::decode(request, &|name, datatype, shape, _| {
                pipeline::check_before_decoding(served, name, datatype, shape)
            }),
        };
        // The message's id: the decoded request's, or the fallback when it could not be decoded.
        let request_id = match &mut decoded {
            Ok(decoded) => {
                decoded.id = request_id;
                None
            }
            Err(_) => request_id,
        };
        // What the model will read is the decoded tensors (the message is dropped): hold
        // those, plus the message's raw contents they share.
        if let (Some(held), Ok(request)) = (&held, &decoded) {
            let copied = request.inputs.iter().fold(0usize, |n, t| {
                n.saturating_add(crate::budget::held_outside(t, &[]))
            });
            // The message is dropped after this; what is kept is the decoded tensors (memory
            // that exists: added even past the budget).
            let now = held.bytes();
            if copied > now {
                held.add(copied - now);
            } else {
                let _ = held.set(copied);
            }
        }
        let call = pipeline::Call {
            model: &model,
            version: version(&model_version),
            protocol: Protocol::Grpc,
            caller,
            // The message's id, also when its contents could not be decoded.
            fallback_id: request_id,
            target,
            // Raw contents carry any bytes.
            encodable: None,
            held,
            user: None,
        };
        let (id, result) = pipeline::handle(&self.state, call, decoded).await;
        (id, result.map(codec::encode))
    }
}

type StreamResult =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        self.allowed(request.extensions(), &request.get_ref().name, "ModelReady")?;
        let r = request.into_inner();
        let ready = match admin::model_readiness(&self.state, &r.name, version(&r.version)) {
            Ok((_, ready)) => ready,
            Err(e) if e.code() == ErrorCode::NotFound => return Err(status(e)),
            // Known but not loaded.
            Err(_) => false,
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let meta = admin::server_metadata();
        Ok(Response::new(pb::ServerMetadataResponse {
            name: meta.name,
            version: meta.version,
            extensions: meta.extensions,
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        self.allowed(
            request.extensions(),
            &request.get_ref().name,
            "ModelMetadata",
        )?;
        let r = request.into_inner();
        let model = self.lookup(&r.name, &r.version)?;
        let meta = self.state.repository.metadata(&model);
        Ok(Response::new(pb::ModelMetadataResponse {
            name: meta.name,
            versions: meta.versions,
            platform: meta.platform,
            inputs: codec::tensor_metadata(&meta.inputs),
            outputs: codec::tensor_metadata(&meta.outputs),
            properties: model.provenance().into_iter().collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let caller = crate::listen::Caller::of(request.extensions());
        let verdict = admission::take_verdict();
        self.allowed(
            request.extensions(),
            &request.get_ref().model_name,
            "ModelInfer",
        )?;
        let appendable = tail::appendable(request.metadata());
        let response = self
            .infer(request.into_inner(), verdict, caller)
            .await
            .1
            .map_err(status)?;
        Ok(tail::respond(response, appendable))
    }

    type ModelStreamInferStream = StreamResult;

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let caller = crate::listen::Caller::of(request.extensions());
        let extensions = request.extensions().clone();
        let mut inbound = request.into_inner();
        let service = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let answer = async move {
            // Requests are answered one at a time, in order; an error goes in error_message and
            // the stream stays open.
            while let Some(item) = inbound.next().await {
                let Ok(request) = item else { break };
                let verdict = admission::take_verdict();
                let allowed = service.allowed(&extensions, &request.model_name, "ModelStreamInfer");
                let answered = match allowed {
                    Ok(()) => {
                        let (id, result) = service.infer(request, verdict, caller.clone()).await;
                        (id, result.map_err(|e| e.to_string()))
                    }
                    Err(denied) => (request.id, Err(denied.message().to_string())),
                };
                let reply = match answered {
                    (_, Ok(response)) => pb::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(response),
                    },
                    (id, Err(e)) => pb::ModelStreamInferResponse {
                        error_message: e,
                        infer_response: Some(pb::ModelInferResponse {
                            id,
                            ..Default::default()
                        }),
                    },
                };
                if tx.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        };
        // The messages are decoded in this task: it carries the call's admission.
        match admission::current() {
            Some(admission) => tokio::spawn(admission.scope(answer)),
            None => tokio::spawn(answer),
        };
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        self.allowed(request.extensions(), &request.get_ref().name, "ModelConfig")?;
        let r = request.into_inner();
        let model = self.lookup(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(codec::pb_config(&model)),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        if !request.get_ref().name.is_empty() {
            self.allowed(
                request.extensions(),
                &request.get_ref().name,
                "ModelStatistics",
            )?;
        }
        let grant = request.extensions().get::<Grant>().cloned();
        let r = request.into_inner();
        let name = (!r.name.is_empty()).then_some(r.name.as_str());
        let stats = admin::statistics(&self.state, name, version(&r.version), grant.as_ref())
            .map_err(status)?;
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: stats.into_iter().map(codec::pb_stats).collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let grant = request.extensions().get::<Grant>().cloned();
        let r = request.into_inner();
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: admin::index(&self.state, r.ready, grant.as_ref())
                .into_iter()
                .map(|e| pb::repository_index_response::ModelIndex {
                    name: e.name,
                    version: e.version,
                    state: e.state,
                    reason: e.reason,
                })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        self.allowed(
            request.extensions(),
            &request.get_ref().model_name,
            "RepositoryModelLoad",
        )?;
        let r = request.into_inner();
        let parameters = r.parameters.keys().map(String::as_str);
        admin::load(&self.state, &r.model_name, parameters)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.allowed(
            request.extensions(),
            &request.get_ref().model_name,
            "RepositoryModelUnload",
        )?;
        let r = request.into_inner();
        let parameters = r.parameters.keys().map(String::as_str);
        admin::unload(&self.state, &r.model_name, parameters)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

/// Serves gRPC (inference service + standard health service) on `listener` until `shutdown`.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<GrpcInferenceServiceServer<GrpcService>>()
        .await;
    let limit = state.max_request_bytes;
    let service_state = state.clone();
    let service = GrpcInferenceServiceServer::new(GrpcService { state })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    // The health service turns NOT_SERVING as soon as the server stops being ready (a drain
    // window starts), while the service goes on answering.
    let mut readiness = service_state.readiness();
    let follower = reporter.clone();
    tokio::spawn(async move {
        if readiness.wait_for(|ready| !*ready).await.is_ok() {
            follower
                .set_not_serving::<GrpcInferenceServiceServer<GrpcService>>()
                .await;
            follower
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    let listening = service_state.listening.clone();
    let services = tower::ServiceBuilder::new()
        // The first layer is the outermost: access control first, so that a caller without a
        // valid token holds no max_concurrent_requests slot.
        .layer(access::AccessLayer {
            state: service_state.clone(),
        })
        .layer(crate::listen::GrpcLimitLayer {
            listening: listening.clone(),
        })
        // The innermost layer calls the inference service itself; tonic's routes have the rest
        // (the health service; UNIMPLEMENTED for any other).
        .layer(admission::AdmissionLayer {
            state: service_state,
            inference: service,
        })
        .service(tonic::service::Routes::new(health));
    // Connections are accepted (TCP_NODELAY, max_connections, TLS, timeouts) and served by
    // `listen`.
    crate::listen::serve_grpc(listener, listening, services, async move {
        shutdown.await;
        reporter
            .set_not_serving::<GrpcInferenceServiceServer<GrpcService>>()
            .await;
    })
    .await
}
