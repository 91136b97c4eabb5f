//! The request path below the wire decoders, shared by every front end: assign the request id,
//! find the model, validate the request against its signature, queue it on the model's
//! scheduler, assemble the response, and record the request (telemetry, inference log).
//!
//! REST (JSON and binary) and gRPC decode into an [`InferRequest`] and call [`handle`], so a
//! model behaves the same through all of them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument;

use oxinfer_core::protocol::{InferRequest, InferResponse, Parameter, raw};
use oxinfer_core::{DataType, Error, Limits, ModelSignature, Result, Tensor};

use crate::budget::Reservation;
use crate::models::ServedModel;
use crate::scheduler::Inline;
use crate::state::AppState;
use crate::telemetry::Protocol;
use crate::telemetry::inference_log::{Event, ModelRecord};

/// A request checked against its model: inputs in signature order, outputs to return.
#[derive(Debug)]
struct Validated {
    /// One tensor per model input, in signature order.
    inputs: Vec<Tensor>,
    /// Indices into the model's outputs, in the order the client asked for them (all outputs in
    /// model order when the client named none).
    outputs: Vec<usize>,
}

/// What a front end checks of each input before decoding its data (the JSON decoder's
/// [`InputCheck`](oxinfer_core::protocol::json::InputCheck)): the checks of [`validate`] and
/// the dimension bounds of [`check_limits`], so that data the model would refuse is never
/// decoded.
pub(crate) fn check_before_decoding(
    model: &ServedModel,
    name: &str,
    datatype: DataType,
    shape: &[usize],
) -> Result<()> {
    model
        .signature()
        .check_input(&model.name, name, datatype, shape)?;
    check_dimensions(&model.entry.limits, name, shape)
}

/// Checks a request against a model signature: every declared input given exactly once, with
/// the declared datatype and a compatible shape; no unknown inputs; requested outputs exist.
fn validate(
    model_name: &str,
    signature: &ModelSignature,
    request: &mut InferRequest,
) -> Result<Validated> {
    let inputs = signature.arrange_inputs(model_name, std::mem::take(&mut request.inputs))?;
    let outputs = if request.outputs.is_empty() {
        (0..signature.outputs.len()).collect()
    } else {
        let mut seen = HashSet::new();
        request
            .outputs
            .iter()
            .map(|o| {
                let (ix, _) = signature.output(&o.name).ok_or_else(|| {
                    Error::invalid(format!(
                        "model '{model_name}' has no output '{}' (outputs: {})",
                        o.name,
                        oxinfer_core::runtime::list(&signature.outputs)
                    ))
                })?;
                if !seen.insert(ix) {
                    return Err(Error::invalid(format!(
                        "output '{}' is requested more than once",
                        o.name
                    )));
                }
                Ok(ix)
            })
            .collect::<Result<Vec<_>>>()?
    };
    Ok(Validated { inputs, outputs })
}

/// A front end's check that it can encode a response.
pub(crate) type EncodableCheck<'a> = dyn Fn(&InferResponse) -> Result<()> + Sync + 'a;

/// Where a request came from.
#[derive(Clone)]
pub(crate) struct Call<'a> {
    /// The model name in the URL or message.
    pub(crate) model: &'a str,
    /// The version asked for, if any.
    pub(crate) version: Option<&'a str>,
    pub(crate) protocol: Protocol,
    /// The client's address and identity, when known.
    pub(crate) caller: crate::listen::Caller,
    /// The request's id when the decoded request carries none: the id a front end read on its
    /// own from a body it could not decode, else REST's `X-Request-ID` header.
    pub(crate) fallback_id: Option<String>,
    /// The model the front end resolved (before decoding, so that nothing is decoded for a
    /// model that is not served), or why there is none.
    pub(crate) target: Result<Arc<ServedModel>>,
    /// Whether the front end can encode a response (REST JSON: BYTES outputs must be UTF-8);
    /// one it cannot is a failed request, recorded as such.
    pub(crate) encodable: Option<&'a EncodableCheck<'a>>,
    /// The request's reservation against the in-flight budget; the pipeline adds the outputs
    /// to it and keeps it with the log record until that is written.
    pub(crate) held: Option<Reservation>,
    /// The end user the client named (OpenAI's `user`), for the log record.
    pub(crate) user: Option<&'a str>,
}

/// The longest request id accepted (`id` in the request, `X-Request-ID`).
pub(crate) const MAX_REQUEST_ID_CHARS: usize = 128;

/// Accepts a client's request id: at most [`MAX_REQUEST_ID_CHARS`] printable ASCII characters.
fn check_request_id(id: &str) -> Result<&str> {
    if id.len() > MAX_REQUEST_ID_CHARS {
        return Err(Error::invalid(format!(
            "the request id is {} bytes long; at most {MAX_REQUEST_ID_CHARS} printable ASCII \
             characters are accepted",
            id.len()
        )));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(Error::invalid(format!(
            "the request id must be printable ASCII (at most {MAX_REQUEST_ID_CHARS} characters)"
        )));
    }
    Ok(id)
}

/// A new request id: a random UUID, hyphenated, in lower case (written straight into its
/// string, without the formatting machinery `to_string` goes through).
fn new_request_id() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// The front ends' entry point: given the model the front end resolved and the decoded request
/// (or why either failed), assigns the request id (the client's, else the `X-Request-ID`
/// header, else a new UUID), runs [`infer`], and records the request in the model's telemetry, the inference log and the
/// debug log. Returns the request id with the outcome.
pub(crate) async fn handle(
    state: &AppState,
    call: Call<'_>,
    decoded: Result<InferRequest>,
) -> (String, Result<InferResponse>) {
    // The wall-clock time is for the log's record only.
    let arrived = state.log.as_ref().map(|_| SystemTime::now());
    let started = Instant::now();
    let given = match &decoded {
        Ok(r) if r.id.as_deref().is_some_and(|id| !id.is_empty()) => r.id.as_deref(),
        _ => call.fallback_id.as_deref(),
    };
    // A client's id goes into the log and back in a header: one that is too long or not
    // printable fails the request, which gets an id of its own.
    let (id, decoded) = match given.map(check_request_id) {
        None => (new_request_id(), decoded),
        Some(Ok(id)) => (id.to_string(), decoded),
        Some(Err(e)) => (new_request_id(), Err(e)),
    };
    // Debug level: free unless a subscriber wants it (the OTLP exporter does; plain info logs
    // do not pay for a span per request).
    let span = tracing::debug_span!(
        "infer",
        request_id = %id,
        model = call.model,
        protocol = call.protocol.as_str(),
        identity = call.caller.identity.as_deref().unwrap_or_default()
    );
    // Moved, not cloned: the model's count is shared by every request to it.
    let target = call.target;
    let (model, inputs, result) = async {
        if let Some(log) = &state.log
            && !log.accepting()
        {
            return (
                None,
                Vec::new(),
                Err(Error::Unavailable(
                    "the inference log cannot be written (see the server log); requests are \
                     refused until it can (on_error = \"refuse\")"
                        .into(),
                )),
            );
        }
        let model = match target {
            Ok(model) => model,
            Err(e) => return (None, Vec::new(), Err(e)),
        };
        let mut request = match decoded {
            Ok(request) => request,
            Err(e) => return (Some(model), Vec::new(), Err(e)),
        };
        request.id = Some(id.clone());
        let inputs = if state.log.is_some() {
            request.inputs.clone()
        } else {
            Vec::new()
        };
        // This request is one of those counted (an inference call always is).
        let lone = state.listening.requests.in_flight() <= 1;
        let result = infer(&model, request, call.held.as_ref(), lone, started)
            .await
            .and_then(|response| {
                if let Some(check) = call.encodable {
                    check(&response)?;
                }
                Ok(response)
            });
        (Some(model), inputs, result)
    }
    .instrument(span.clone())
    .await;
    let elapsed = started.elapsed();
    match &model {
        Some(m) => m.telemetry.request(call.protocol, result.is_ok(), elapsed),
        None => state.metrics.record_rejected(call.protocol),
    }
    span.in_scope(|| match &result {
        Ok(_) => tracing::debug!(latency_us = elapsed.as_micros() as u64, "request succeeded"),
        Err(e) => {
            tracing::debug!(latency_us = elapsed.as_micros() as u64, error = %e, "request failed")
        }
    });
    if let Some(log) = &state.log {
        log.record(Event {
            timestamp: arrived.unwrap_or_else(SystemTime::now),
            request_id: id.as_str().into(),
            // The served model's own record; named as asked when the name differs.
            model: match &model {
                Some(m) if m.record.name == call.model => m.record.clone(),
                Some(m) => Arc::new(ModelRecord {
                    name: call.model.to_string(),
                    ..ModelRecord::clone(&m.record)
                }),
                None => Arc::new(ModelRecord {
                    name: call.model.to_string(),
                    version: call.version.unwrap_or_default().to_string(),
                    sha256: None,
                    origin: None,
                }),
            },
            protocol: call.protocol.as_str(),
            client: call.caller.addr,
            identity: call.caller.identity.as_deref().map(str::to_string),
            user: call.user.map(str::to_string),
            _held: call.held.clone(),
            error: result.as_ref().err().map(ToString::to_string),
            latency_us: elapsed.as_micros() as u64,
            inputs,
            outputs: result
                .as_ref()
                .map(|r| r.outputs.as_slice().into())
                .unwrap_or_default(),
        })
        .await;
    }
    (id, result)
}

/// Inline execution ([`crate::scheduler`]) only for inputs up to this size in all, however
/// fast the model is on larger ones. Over HTTP/2, the hand-off to a worker thread moves the
/// request's task to the other I/O thread when it is woken, so that the connection's task and
/// the request's share two threads while a large response is sent: an identity on a 602 KB
/// image (32 us) run inline gained 25% at c=1 with 1 GB client windows and lost 21% with 64 KB
/// ones (ARCHITECTURE.md, design decisions).
const INLINE_MAX_INPUT_BYTES: usize = 64 * 1024;

/// Checks an input's rows (first dimension) and every dimension against the model's limits.
fn check_dimensions(limits: &Limits, name: &str, shape: &[usize]) -> Result<()> {
    if let Some(&first) = shape.first()
        && first > limits.max_rows
    {
        return Err(Error::invalid(format!(
            "input '{name}': {first} rows (first dimension) is over the model's limit of {} \
             (max_rows in [models.limits])",
            limits.max_rows
        )));
    }
    if let Some(&dim) = shape.iter().find(|&&d| d > limits.max_dimension) {
        return Err(Error::invalid(format!(
            "input '{name}': dimension {dim} of shape {shape:?} is over the model's limit of {} \
             (max_dimension in [models.limits])",
            limits.max_dimension
        )));
    }
    if shape.contains(&0) {
        let extent = shape
            .iter()
            .filter(|&&d| d > 0)
            .fold(1u128, |n, &d| n.saturating_mul(d as u128));
        if extent > limits.max_empty_extent as u128 {
            return Err(Error::invalid(format!(
                "input '{name}': shape {shape:?} has no elements but spans {extent} positions in \
                 its other dimensions, over the model's limit of {} (max_empty_extent in \
                 [models.limits])",
                limits.max_empty_extent
            )));
        }
    }
    Ok(())
}

/// Checks a validated request against the model's `[models.limits]`: the rows and every
/// dimension of its inputs, and the size its outputs would have by the model's signature (a
/// dynamic first dimension taken as the request's rows, other dynamic dimensions as 1), so that
/// a request with zero-sized dimensions cannot make the model produce far more than it sent.
/// Returns the estimate of the outputs' size, in bytes.
fn check_limits(limits: &Limits, signature: &ModelSignature, request: &Validated) -> Result<usize> {
    let mut rows = 0usize;
    for t in &request.inputs {
        check_dimensions(limits, t.name(), t.shape())?;
        rows = rows.max(t.shape().first().copied().unwrap_or(0));
    }
    let estimate = request
        .outputs
        .iter()
        .map(|&ix| {
            let meta = &signature.outputs[ix];
            let elements = meta.shape.iter().enumerate().fold(1u128, |n, (i, &d)| {
                let d = match d {
                    d if d >= 0 => d as u128,
                    _ if i == 0 => rows as u128,
                    _ => 1,
                };
                n.saturating_mul(d)
            });
            elements.saturating_mul(meta.datatype.size().unwrap_or(4) as u128)
        })
        .fold(0u128, u128::saturating_add);
    if estimate > limits.max_output_bytes as u128 {
        return Err(Error::TooLarge(format!(
            "this request's outputs would be at least {estimate} bytes by the model's signature, \
             over its limit of {} (max_output_bytes in [models.limits])",
            limits.max_output_bytes
        )));
    }
    Ok(estimate as usize)
}

/// The request's queue deadline: its `timeout` parameter, in microseconds (Triton's and
/// tritonclient's convention), if any.
fn request_timeout(request: &InferRequest) -> Result<Option<Duration>> {
    match request.parameters.get("timeout") {
        None => Ok(None),
        Some(Parameter::Int64(us)) if *us >= 0 => Ok(Some(Duration::from_micros(*us as u64))),
        Some(Parameter::Uint64(us)) => Ok(Some(Duration::from_micros(*us))),
        Some(other) => Err(Error::invalid(format!(
            "parameter 'timeout' must be a non-negative integer (microseconds), got {other:?}"
        ))),
    }
}

/// Runs one request on a model: validation, execution on the model's scheduler threads,
/// response assembly. The outputs' estimated size is reserved in `held` before the request is
/// queued, and their real size once they exist.
///
/// `lone`: no other request is in flight in the server. A small request may be executed on
/// this thread ([`crate::scheduler`]'s inline execution), for a fast model if others are in
/// flight, for a less fast one if none is. `started`: when [`handle`] took the request, from
/// which its input checks are timed.
async fn infer(
    model: &Arc<ServedModel>,
    mut request: InferRequest,
    held: Option<&Reservation>,
    lone: bool,
    started: Instant,
) -> Result<InferResponse> {
    let validated = validate(&model.name, model.signature(), &mut request)?;
    let estimate = check_limits(&model.entry.limits, model.signature(), &validated)?;
    if let Some(held) = held {
        held.grow(estimate)?;
    }
    let timeout = request_timeout(&request)?;
    let telemetry = &model.telemetry;
    // One clock read ends the input checks and starts the job's time in the scheduler.
    let checked = Instant::now();
    telemetry.input_checked(checked - started);
    let Validated { inputs, outputs } = validated;
    // The worker threads execute it; if this future is dropped (the client went away), the
    // queued job is dropped unexecuted.
    let small = inputs
        .iter()
        .try_fold(0usize, |n, t| {
            Some(n + raw::raw_len(t)).filter(|&n| n <= INLINE_MAX_INPUT_BYTES)
        })
        .is_some();
    let inline = match (small, lone) {
        (false, _) => Inline::No,
        (true, true) => Inline::Lone,
        (true, false) => Inline::Concurrent,
    };
    let ticket = model.scheduler.submit(inputs, timeout, inline, checked)?;
    let produced = ticket.outcome().await?;
    let assembling = Instant::now();
    let produced_bytes: usize = outputs.iter().map(|&ix| raw::raw_len(&produced[ix])).sum();
    if let Some(held) = held {
        held.add(produced_bytes.saturating_sub(estimate));
    }
    let max = model.entry.limits.max_output_bytes;
    if produced_bytes > max {
        return Err(Error::TooLarge(format!(
            "the model's outputs for this request are {produced_bytes} bytes, over its limit of \
             {max} (max_output_bytes in [models.limits])"
        )));
    }
    // Every output in the model's order (no `outputs` in the request, the usual case) is the
    // model's answer as it is.
    let outputs = if outputs.iter().copied().eq(0..produced.len()) {
        produced
    } else {
        let mut slots: Vec<Option<Tensor>> = produced.into_iter().map(Some).collect();
        outputs
            .into_iter()
            .map(|ix| {
                slots[ix]
                    .take()
                    .expect("each output index is requested once")
            })
            .collect()
    };
    let response = InferResponse {
        model_name: model.name.clone(),
        model_version: model.version.clone(),
        id: request.id,
        parameters: [(
            "model_sha256".to_string(),
            Parameter::String(model.sha256.clone()),
        )]
        .into(),
        outputs,
    };
    telemetry.output_assembled(assembling.elapsed());
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxinfer_core::DataType;
    use oxinfer_core::protocol::RequestedOutput;
    use oxinfer_core::protocol::TensorMetadata;

    #[test]
    fn a_new_request_id_is_a_random_uuid_in_its_usual_form() {
        let id = new_request_id();
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(id, parsed.to_string());
        assert_eq!(id.len(), 36);
        assert_ne!(id, new_request_id());
    }

    fn signature() -> ModelSignature {
        ModelSignature {
            inputs: vec![
                TensorMetadata::new("a", DataType::Fp32, vec![-1, 2]),
                TensorMetadata::new("b", DataType::Int64, vec![3]),
            ],
            outputs: vec![
                TensorMetadata::new("y", DataType::Fp32, vec![-1]),
                TensorMetadata::new("z", DataType::Fp32, vec![-1]),
            ],
        }
    }

    fn request(inputs: Vec<Tensor>, outputs: &[&str]) -> InferRequest {
        InferRequest {
            inputs,
            outputs: outputs
                .iter()
                .map(|n| RequestedOutput {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn a(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec("a", shape, vec![0f32; n]).unwrap()
    }

    fn b() -> Tensor {
        Tensor::from_vec("b", vec![3], vec![1i64, 2, 3]).unwrap()
    }

    fn check(inputs: Vec<Tensor>, outputs: &[&str]) -> Result<Validated> {
        validate("m", &signature(), &mut request(inputs, outputs))
    }

    #[test]
    fn orders_inputs_and_outputs() {
        let v = check(vec![b(), a(vec![5, 2])], &["z", "y"]).unwrap();
        assert_eq!(v.inputs[0].name(), "a");
        assert_eq!(v.inputs[1].name(), "b");
        assert_eq!(v.outputs, vec![1, 0]);
        assert_eq!(
            check(vec![a(vec![1, 2]), b()], &[]).unwrap().outputs,
            vec![0, 1]
        );
    }

    #[test]
    fn each_mismatch_is_named() {
        let e = |inputs, outputs: &[&str]| check(inputs, outputs).unwrap_err().to_string();
        assert!(e(vec![a(vec![1, 2])], &[]).contains("missing input 'b'"));
        assert!(
            e(
                vec![
                    a(vec![1, 2]),
                    b(),
                    Tensor::from_vec("c", vec![1], vec![1u8]).unwrap()
                ],
                &[]
            )
            .contains("has no input 'c' (inputs: 'a', 'b')")
        );
        assert!(
            e(vec![a(vec![1, 3]), b()], &[])
                .contains("shape [1, 3] does not match the model's [-1, 2]")
        );
        assert!(e(vec![a(vec![2]), b()], &[]).contains("does not match"));
        let wrong_type = Tensor::from_vec("b", vec![3], vec![1i32, 2, 3]).unwrap();
        assert!(
            e(vec![a(vec![1, 2]), wrong_type], &[])
                .contains("datatype INT32 does not match the model's INT64")
        );
        assert!(e(vec![a(vec![1, 2]), b(), b()], &[]).contains("more than once"));
        assert!(
            e(vec![a(vec![1, 2]), b()], &["nope"])
                .contains("has no output 'nope' (outputs: 'y', 'z')")
        );
        assert!(e(vec![a(vec![1, 2]), b()], &["y", "y"]).contains("requested more than once"));
    }
}
