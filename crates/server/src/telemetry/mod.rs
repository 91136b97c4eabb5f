//! What the server records about the requests it serves.
//!
//! - [`ModelTelemetry`]: the one place a model version's timings and counts are recorded; the
//!   Triton statistics ([`stats`]) and the Prometheus metrics ([`metrics`]) are two views of it;
//! - [`metrics`]: `GET /metrics`, rendered per scrape from the models being served;
//! - [`inference_log`]: the tamper-evident record of every request, its writer and verifier.

pub mod inference_log;
pub(crate) mod metrics;
pub(crate) mod stats;

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};

use stats::ModelStats;

/// The protocols a request can arrive by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// REST (JSON or binary).
    Http,
    /// gRPC.
    Grpc,
    /// The OpenAI-compatible embeddings API (`/v1/embeddings`).
    OpenAi,
    /// The TEI-compatible embeddings API (`/embed`).
    Tei,
}

impl Protocol {
    /// The label value, and the `protocol` of inference log records.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::OpenAi => "openai",
            Protocol::Tei => "tei",
        }
    }

    pub(crate) const ALL: [Protocol; 4] = [
        Protocol::Http,
        Protocol::Grpc,
        Protocol::OpenAi,
        Protocol::Tei,
    ];
}

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Upper bounds of the batch size histogram's buckets.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Everything recorded about one served model version: its Triton statistics and its Prometheus
/// series (labelled `model`, `version`). Created with the loaded instance, so both restart from
/// zero when a model is reloaded (Prometheus handles counter resets).
#[derive(Debug)]
pub(crate) struct ModelTelemetry {
    stats: ModelStats,
    /// `[protocol][success, failure]`, resolved once so the request path does no label lookup.
    requests: [[IntCounter; 2]; Protocol::ALL.len()],
    requests_family: IntCounterVec,
    request_duration: [Histogram; Protocol::ALL.len()],
    request_duration_family: HistogramVec,
    queue_duration: Histogram,
    compute_duration: Histogram,
    batch_size: Histogram,
    queue_depth: IntGauge,
    /// Requests refused because the queue was full.
    pub(crate) rejected: IntCounter,
    /// Requests whose deadline passed in the queue (answered with an error, not executed).
    pub(crate) expired: IntCounter,
    /// Requests whose client went away while they were queued (dropped, not executed).
    pub(crate) cancelled: IntCounter,
    /// Executions that ran more than one request together.
    pub(crate) batched_executions: IntCounter,
}

fn opts(name: &str, help: &str, model: &str, version: &str) -> Opts {
    Opts::new(name, help)
        .const_label("model", model)
        .const_label("version", version)
}

fn histogram(name: &str, help: &str, model: &str, version: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(
        HistogramOpts::from(opts(name, help, model, version)).buckets(buckets.to_vec()),
    )
    .expect("valid histogram options")
}

fn counter(name: &str, help: &str, model: &str, version: &str) -> IntCounter {
    IntCounter::with_opts(opts(name, help, model, version)).expect("valid counter options")
}

impl ModelTelemetry {
    /// The series of model `name`, version `version`, all at zero.
    pub(crate) fn new(name: &str, version: &str) -> Self {
        let requests_family = IntCounterVec::new(
            opts(
                "oxinfer_requests_total",
                "Inference requests by model, version, protocol and outcome.",
                name,
                version,
            ),
            &["protocol", "outcome"],
        )
        .expect("valid counter options");
        let request_duration_family = HistogramVec::new(
            HistogramOpts::from(opts(
                "oxinfer_request_duration_seconds",
                "Time from a request's arrival to its response.",
                name,
                version,
            ))
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["protocol"],
        )
        .expect("valid histogram options");
        let by_outcome = |p: Protocol| {
            ["success", "failure"].map(|o| requests_family.with_label_values(&[p.as_str(), o]))
        };
        ModelTelemetry {
            stats: ModelStats::default(),
            requests: Protocol::ALL.map(by_outcome),
            request_duration: Protocol::ALL
                .map(|p| request_duration_family.with_label_values(&[p.as_str()])),
            requests_family,
            request_duration_family,
            queue_duration: histogram(
                "oxinfer_queue_duration_seconds",
                "Time waiting for a worker thread.",
                name,
                version,
                &LATENCY_BUCKETS,
            ),
            compute_duration: histogram(
                "oxinfer_compute_duration_seconds",
                "Time in the runtime's execution.",
                name,
                version,
                &LATENCY_BUCKETS,
            ),
            batch_size: histogram(
                "oxinfer_batch_size",
                "Batch size (first input dimension) of each execution.",
                name,
                version,
                &BATCH_BUCKETS,
            ),
            queue_depth: IntGauge::with_opts(opts(
                "oxinfer_queue_depth",
                "Requests waiting for a worker thread.",
                name,
                version,
            ))
            .expect("valid gauge options"),
            rejected: counter(
                "oxinfer_scheduler_rejected_total",
                "Requests refused because the model's queue was full.",
                name,
                version,
            ),
            expired: counter(
                "oxinfer_scheduler_expired_total",
                "Requests whose timeout expired in the queue (not executed).",
                name,
                version,
            ),
            cancelled: counter(
                "oxinfer_scheduler_cancelled_total",
                "Queued requests dropped because their client went away (not executed).",
                name,
                version,
            ),
            batched_executions: counter(
                "oxinfer_scheduler_batched_executions_total",
                "Executions that ran several requests as one batch.",
                name,
                version,
            ),
        }
    }

    /// The Triton statistics view.
    pub(crate) fn stats(&self) -> &ModelStats {
        &self.stats
    }

    /// A finished request, from its arrival to its response, by outcome.
    pub(crate) fn request(&self, protocol: Protocol, success: bool, elapsed: Duration) {
        let p = protocol as usize;
        self.requests[p][usize::from(!success)].inc();
        self.request_duration[p].observe(elapsed.as_secs_f64());
        if success {
            self.stats.success.record(elapsed);
        } else {
            self.stats.fail.record(elapsed);
        }
    }

    /// The request's input checks against the model signature.
    pub(crate) fn input_checked(&self, elapsed: Duration) {
        self.stats.compute_input.record(elapsed);
    }

    /// The time a request waited in the queue (executed or expired there).
    pub(crate) fn queued(&self, waited: Duration) {
        self.stats.queue.record(waited);
        self.queue_duration.observe(waited.as_secs_f64());
    }

    /// One call of the runtime's `execute`.
    pub(crate) fn computed(&self, elapsed: Duration) {
        self.stats.compute_infer.record(elapsed);
        self.compute_duration.observe(elapsed.as_secs_f64());
    }

    /// A successful execution of `rows` inferences (one request, or several batched).
    pub(crate) fn executed(&self, rows: u64) {
        self.stats.record_execution(rows);
        self.batch_size.observe(rows as f64);
    }

    /// The selection and assembly of the requested outputs.
    pub(crate) fn output_assembled(&self, elapsed: Duration) {
        self.stats.compute_output.record(elapsed);
    }

    /// The number of requests waiting for a worker now.
    pub(crate) fn queue_depth(&self, n: usize) {
        self.queue_depth.set(n as i64);
    }

    /// The Prometheus view: every series of this model version.
    pub(crate) fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.requests_family.clone()),
            Box::new(self.request_duration_family.clone()),
            Box::new(self.queue_duration.clone()),
            Box::new(self.compute_duration.clone()),
            Box::new(self.batch_size.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.rejected.clone()),
            Box::new(self.expired.clone()),
            Box::new(self.cancelled.clone()),
            Box::new(self.batched_executions.clone()),
        ]
    }
}

/// Server-wide counters.
#[derive(Debug)]
pub(crate) struct ServerMetrics {
    rejected: IntCounterVec,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        let rejected = IntCounterVec::new(
            Opts::new(
                "oxinfer_requests_rejected_total",
                "Requests that failed before a model was found.",
            ),
            &["protocol"],
        )
        .expect("valid counter options");
        for p in Protocol::ALL {
            rejected.with_label_values(&[p.as_str()]);
        }
        ServerMetrics { rejected }
    }
}

impl ServerMetrics {
    /// Counts a request that failed before a model was found.
    pub(crate) fn record_rejected(&self, protocol: Protocol) {
        self.rejected.with_label_values(&[protocol.as_str()]).inc();
    }
}
