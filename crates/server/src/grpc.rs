//! The OIP gRPC API (`inference.GRPCInferenceService`, tonic), with Triton's extensions, on its
//! own listener. Requests are decoded into the same [`InferRequest`] as REST and run through the
//! same [`pipeline::infer`], so a model behaves identically through both.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use oxinfer_core::protocol::json::check_shape;
use oxinfer_core::protocol::{
    InferRequest, InferResponse, Parameter, Parameters, RequestedOutput, raw,
};
use oxinfer_core::{DataType, Error, ErrorCode, Tensor};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::config::ModelConfig;
use crate::http::{AppState, EXTENSIONS};
use crate::metrics::Protocol;
use crate::pipeline;
use crate::repository::ServedModel;
use crate::stats::Duration64;

/// The code generated from `proto/inference.proto` (package `inference`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// Maps an oxinfer error to a gRPC status, following Triton's mapping.
pub fn status(e: Error) -> Status {
    let code = match e.code() {
        ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorCode::Unimplemented => tonic::Code::Unimplemented,
        ErrorCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        ErrorCode::Internal => {
            tracing::warn!("gRPC request failed: {e}");
            tonic::Code::Internal
        }
    };
    Status::new(code, e.to_string())
}

fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

fn parameter(p: &pb::InferParameter) -> Option<Parameter> {
    use pb::infer_parameter::ParameterChoice as C;
    Some(match p.parameter_choice.as_ref()? {
        C::BoolParam(b) => Parameter::Bool(*b),
        C::Int64Param(i) => Parameter::Int64(*i),
        C::StringParam(s) => Parameter::String(s.clone()),
        C::DoubleParam(d) => Parameter::Double(*d),
        C::Uint64Param(u) => match i64::try_from(*u) {
            Ok(i) => Parameter::Int64(i),
            Err(_) => Parameter::Uint64(*u),
        },
    })
}

fn parameters(map: &HashMap<String, pb::InferParameter>) -> Parameters {
    map.iter()
        .filter_map(|(k, v)| Some((k.clone(), parameter(v)?)))
        .collect()
}

fn to_pb_parameter(p: &Parameter) -> pb::InferParameter {
    use pb::infer_parameter::ParameterChoice as C;
    pb::InferParameter {
        parameter_choice: Some(match p {
            Parameter::Bool(b) => C::BoolParam(*b),
            Parameter::Int64(i) => C::Int64Param(*i),
            Parameter::Uint64(u) => C::Uint64Param(*u),
            Parameter::Double(d) => C::DoubleParam(*d),
            Parameter::String(s) => C::StringParam(s.clone()),
        }),
    }
}

/// Narrows typed gRPC contents to a tensor of `T`, refusing values out of range.
fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S> + oxinfer_core::Element>(
    name: &str,
    shape: Vec<usize>,
    values: &[S],
) -> Result<Tensor, Error> {
    let narrowed = values
        .iter()
        .map(|&v| {
            T::try_from(v).map_err(|_| {
                Error::invalid(format!(
                    "input '{name}': {v} is out of range for {}",
                    T::DATATYPE
                ))
            })
        })
        .collect::<Result<Vec<T>, Error>>()?;
    Tensor::from_vec(name, shape, narrowed)
}

fn from_contents(
    name: &str,
    datatype: DataType,
    shape: Vec<usize>,
    count: usize,
    c: pb::InferTensorContents,
) -> Result<Tensor, Error> {
    let len = match datatype {
        DataType::Bool => c.bool_contents.len(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => c.int_contents.len(),
        DataType::Int64 => c.int64_contents.len(),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => c.uint_contents.len(),
        DataType::Uint64 => c.uint64_contents.len(),
        DataType::Fp32 => c.fp32_contents.len(),
        DataType::Fp64 => c.fp64_contents.len(),
        DataType::Bytes => c.bytes_contents.len(),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(Error::invalid(format!(
                "input '{name}': {datatype} can only be sent in raw_input_contents"
            )));
        }
    };
    if len != count {
        return Err(Error::invalid(format!(
            "input '{name}': shape {shape:?} needs {count} elements but contents has {len}"
        )));
    }
    match datatype {
        DataType::Bool => Tensor::from_bools(name, shape, &c.bool_contents),
        DataType::Int8 => narrow::<i32, i8>(name, shape, &c.int_contents),
        DataType::Int16 => narrow::<i32, i16>(name, shape, &c.int_contents),
        DataType::Int32 => Tensor::from_vec(name, shape, c.int_contents),
        DataType::Int64 => Tensor::from_vec(name, shape, c.int64_contents),
        DataType::Uint8 => narrow::<u32, u8>(name, shape, &c.uint_contents),
        DataType::Uint16 => narrow::<u32, u16>(name, shape, &c.uint_contents),
        DataType::Uint32 => Tensor::from_vec(name, shape, c.uint_contents),
        DataType::Uint64 => Tensor::from_vec(name, shape, c.uint64_contents),
        DataType::Fp32 => Tensor::from_vec(name, shape, c.fp32_contents),
        DataType::Fp64 => Tensor::from_vec(name, shape, c.fp64_contents),
        DataType::Bytes => Tensor::from_strings(name, shape, c.bytes_contents),
        DataType::Fp16 | DataType::Bf16 => unreachable!("refused above"),
    }
}

/// Decodes a `ModelInferRequest`: raw contents (sliced, no copy) or typed contents, never both.
pub fn decode(request: pb::ModelInferRequest) -> Result<InferRequest, Error> {
    let raw_count = request.raw_input_contents.len();
    if raw_count > 0 {
        if raw_count != request.inputs.len() {
            return Err(Error::invalid(format!(
                "raw_input_contents has {raw_count} entries but the request has {} inputs; \
                 send one raw entry per input, in input order",
                request.inputs.len()
            )));
        }
        if let Some(mixed) = request.inputs.iter().find(|i| i.contents.is_some()) {
            return Err(Error::invalid(format!(
                "input '{}' has typed contents while the request uses raw_input_contents; \
                 use one or the other for all inputs",
                mixed.name
            )));
        }
    }
    let mut raws = request.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype: DataType = input
            .datatype
            .parse()
            .map_err(|e| Error::invalid(format!("input '{}': {e}", input.name)))?;
        let (shape, count) = check_shape(&input.name, &input.shape)?;
        let tensor = match raws.next() {
            Some(data) => raw::tensor_from_raw(input.name, datatype, shape, data)?,
            None => {
                let contents = input.contents.ok_or_else(|| {
                    Error::invalid(format!(
                        "input '{}' has no data: set its contents or raw_input_contents",
                        input.name
                    ))
                })?;
                from_contents(&input.name, datatype, shape, count, contents)?
            }
        };
        inputs.push(tensor);
    }
    Ok(InferRequest {
        id: (!request.id.is_empty()).then_some(request.id),
        parameters: parameters(&request.parameters),
        inputs,
        outputs: request
            .outputs
            .into_iter()
            .map(|o| RequestedOutput {
                parameters: parameters(&o.parameters),
                name: o.name,
            })
            .collect(),
    })
}

/// Encodes a response: every output in `raw_output_contents`, one entry per output, in order.
pub fn encode(response: InferResponse) -> pb::ModelInferResponse {
    let raw_output_contents = response.outputs.iter().map(raw::raw_bytes).collect();
    pb::ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id.unwrap_or_default(),
        parameters: response
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), to_pb_parameter(v)))
            .collect(),
        outputs: response
            .outputs
            .iter()
            .map(|t| pb::model_infer_response::InferOutputTensor {
                name: t.name().to_string(),
                datatype: t.datatype().as_str().to_string(),
                shape: t.shape().iter().map(|&d| d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            })
            .collect(),
        raw_output_contents,
    }
}

/// The gRPC service over the shared server state.
#[derive(Debug, Clone)]
pub struct GrpcService {
    state: AppState,
}

impl GrpcService {
    /// A service over `state`.
    pub fn new(state: AppState) -> Self {
        GrpcService { state }
    }

    fn lookup(&self, name: &str, v: &str) -> Result<Arc<ServedModel>, Status> {
        self.state.repository.get(name, version(v)).map_err(status)
    }

    async fn infer(
        &self,
        request: pb::ModelInferRequest,
        client: Option<std::net::SocketAddr>,
    ) -> (String, Result<pb::ModelInferResponse, Error>) {
        let model = request.model_name.clone();
        let model_version = request.model_version.clone();
        let call = pipeline::Call {
            model: &model,
            version: version(&model_version),
            protocol: Protocol::Grpc,
            client,
            header_id: None,
        };
        let (id, result) = pipeline::handle(&self.state, call, decode(request)).await;
        (id, result.map(encode))
    }
}

fn tensor_metadata(
    list: &[oxinfer_core::protocol::TensorMetadata],
) -> Vec<pb::model_metadata_response::TensorMetadata> {
    list.iter()
        .map(|t| pb::model_metadata_response::TensorMetadata {
            name: t.name.clone(),
            datatype: t.datatype.as_str().to_string(),
            shape: t.shape.clone(),
        })
        .collect()
}

fn pb_config(model: &ServedModel) -> pb::ModelConfig {
    // The REST config is the one description; gRPC carries the same values, with Triton's enum
    // names turned into the proto's numbers.
    let config = ModelConfig::of(model);
    let data_type = |name: &str| pb::DataType::from_str_name(name).unwrap_or_default() as i32;
    pb::ModelConfig {
        name: config.name,
        platform: config.platform,
        backend: config.backend,
        max_batch_size: config.max_batch_size,
        input: config
            .input
            .into_iter()
            .map(|t| pb::ModelInput {
                data_type: data_type(t.data_type),
                name: t.name,
                dims: t.dims,
                ..Default::default()
            })
            .collect(),
        output: config
            .output
            .into_iter()
            .map(|t| pb::ModelOutput {
                data_type: data_type(t.data_type),
                name: t.name,
                dims: t.dims,
                ..Default::default()
            })
            .collect(),
        scheduling_choice: config.dynamic_batching.map(|d| {
            pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                preferred_batch_size: d.preferred_batch_size,
                max_queue_delay_microseconds: d.max_queue_delay_microseconds,
                default_queue_policy: Some(pb::ModelQueuePolicy {
                    timeout_action: pb::model_queue_policy::TimeoutAction::Reject as i32,
                    default_timeout_microseconds: d
                        .default_queue_policy
                        .default_timeout_microseconds,
                    allow_timeout_override: d.default_queue_policy.allow_timeout_override,
                    max_queue_size: d.default_queue_policy.max_queue_size,
                }),
                ..Default::default()
            })
        }),
        instance_group: config
            .instance_group
            .iter()
            .map(|g| pb::ModelInstanceGroup {
                name: g.name.clone(),
                kind: pb::model_instance_group::Kind::from_str_name(g.kind).unwrap_or_default()
                    as i32,
                count: g.count,
                ..Default::default()
            })
            .collect(),
        parameters: config
            .parameters
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    pb::ModelParameter {
                        string_value: v.string_value,
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

fn duration(d: Duration64) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.count,
        ns: d.ns,
    })
}

fn pb_stats(model: &ServedModel) -> pb::ModelStatistics {
    let s = model.stats.snapshot();
    let i = s.inference_stats;
    pb::ModelStatistics {
        name: model.name.clone(),
        version: model.version.clone(),
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(i.success),
            fail: duration(i.fail),
            queue: duration(i.queue),
            compute_input: duration(i.compute_input),
            compute_infer: duration(i.compute_infer),
            compute_output: duration(i.compute_output),
            cache_hit: duration(i.cache_hit),
            cache_miss: duration(i.cache_miss),
        }),
        ..Default::default()
    }
}

fn no_parameters(
    params: &HashMap<String, pb::ModelRepositoryParameter>,
    allowed: &[&str],
) -> Result<(), Status> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(Status::invalid_argument(format!(
            "repository parameter '{key}' is not supported: oxinfer loads a model only from the \
             files its manifest lists"
        ))),
        None => Ok(()),
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
            ready: self.state.ready.load(Ordering::Relaxed),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.state.ready.load(Ordering::Relaxed)
            && match self.state.repository.get(&r.name, version(&r.version)) {
                Ok(_) => true,
                Err(e) if e.code() == ErrorCode::NotFound => return Err(status(e)),
                Err(_) => false,
            };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "oxinfer".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let model = self.lookup(&r.name, &r.version)?;
        let meta = self.state.repository.metadata(&model);
        Ok(Response::new(pb::ModelMetadataResponse {
            name: meta.name,
            versions: meta.versions,
            platform: meta.platform,
            inputs: tensor_metadata(&meta.inputs),
            outputs: tensor_metadata(&meta.outputs),
            properties: model.provenance().into_iter().collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let client = request.remote_addr();
        self.infer(request.into_inner(), client)
            .await
            .1
            .map(Response::new)
            .map_err(status)
    }

    type ModelStreamInferStream = StreamResult;

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let client = request.remote_addr();
        let mut inbound = request.into_inner();
        let service = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            // Requests are answered one at a time, in order; an error goes in error_message and
            // the stream stays open.
            while let Some(item) = inbound.next().await {
                let Ok(request) = item else { break };
                let reply = match service.infer(request, client).await {
                    (_, Ok(response)) => pb::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(response),
                    },
                    (id, Err(e)) => pb::ModelStreamInferResponse {
                        error_message: e.to_string(),
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
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let model = self.lookup(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(pb_config(&model)),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let models = if r.name.is_empty() {
            self.state.repository.ready_models()
        } else if r.version.is_empty() {
            self.state
                .repository
                .ready_versions(&r.name)
                .map_err(status)?
        } else {
            vec![self.lookup(&r.name, &r.version)?]
        };
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: models.iter().map(|m| pb_stats(m)).collect(),
        }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: self
                .state
                .repository
                .index(r.ready)
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
        let r = request.into_inner();
        no_parameters(&r.parameters, &[])?;
        let repository = self.state.repository.clone();
        let name = r.model_name.clone();
        tokio::task::spawn_blocking(move || repository.reload(&name))
            .await
            .map_err(|e| Status::internal(format!("loading '{}' panicked: {e}", r.model_name)))?
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let r = request.into_inner();
        no_parameters(&r.parameters, &["unload_dependents"])?;
        let repository = self.state.repository.clone();
        let name = r.model_name.clone();
        tokio::task::spawn_blocking(move || repository.unload(&name))
            .await
            .map_err(|e| Status::internal(format!("unloading '{}' panicked: {e}", r.model_name)))?
            .map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

/// Serves gRPC (inference service + standard health service) on `listener` until `shutdown`.
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<GrpcInferenceServiceServer<GrpcService>>()
        .await;
    let limit = state.max_request_bytes;
    let service = GrpcInferenceServiceServer::new(GrpcService::new(state))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                shutdown.await;
                reporter
                    .set_not_serving::<GrpcInferenceServiceServer<GrpcService>>()
                    .await;
            },
        )
        .await
}
