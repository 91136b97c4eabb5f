//! Prometheus metrics (`GET /metrics`, text format 0.0.4), every name prefixed `oxinfer_`.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `oxinfer_requests_total` | counter | model, version, protocol, outcome | inference requests by outcome (`success` / `failure`) |
//! | `oxinfer_request_duration_seconds` | histogram | model, version, protocol | time from arrival to response |
//! | `oxinfer_queue_duration_seconds` | histogram | model, version | waiting for a worker thread |
//! | `oxinfer_compute_duration_seconds` | histogram | model, version | the runtime's execution |
//! | `oxinfer_batch_size` | histogram | model, version | first dimension of each execution's inputs |
//! | `oxinfer_queue_depth` | gauge | model, version | requests waiting for a worker now |
//! | `oxinfer_scheduler_rejected_total` | counter | model, version | requests refused because the queue was full (503) |
//! | `oxinfer_scheduler_expired_total` | counter | model, version | requests whose timeout expired in the queue (504, not executed) |
//! | `oxinfer_scheduler_cancelled_total` | counter | model, version | queued requests dropped because the client went away |
//! | `oxinfer_scheduler_batched_executions_total` | counter | model, version | executions that joined several requests |
//! | `oxinfer_requests_rejected_total` | counter | protocol | requests that failed before a model was found (unknown model, undecodable body) |
//! | `oxinfer_runtime_value` | gauge | model, version, name | a runtime's own counters, e.g. tract's `plans_compiled`, `plan_cache_hits`, `plan_cache_evictions`, `plans_cached` |
//! | `oxinfer_models_loaded` | gauge | | model versions ready to serve |
//! | `oxinfer_inference_log_records_written_total` | counter | | inference-log records written |
//! | `oxinfer_inference_log_records_dropped_total` | counter | | inference-log records dropped (queue full, `on_full = "drop"`) |
//! | `oxinfer_process_resident_memory_bytes` | gauge | | resident set size of the process |
//!
//! Per-model series restart from zero when a model is reloaded (Prometheus handles counter
//! resets).

use crate::scheduler::SchedulerCounters;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Upper bounds of the batch size histogram's buckets.
pub const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// A histogram with fixed buckets, updated without locks.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum, in millionths of the unit (microseconds for seconds).
    sum_micros: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending upper bounds; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        if let Some(ix) = self.bounds.iter().position(|&b| value <= b) {
            self.buckets[ix].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The protocols a request can arrive by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// REST (JSON or binary).
    Http,
    /// gRPC.
    Grpc,
}

impl Protocol {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }

    const ALL: [Protocol; 2] = [Protocol::Http, Protocol::Grpc];

    fn index(self) -> usize {
        self as usize
    }
}

/// The metrics of one served model version.
#[derive(Debug)]
pub struct ModelMetrics {
    requests: [[AtomicU64; 2]; 2],
    request_duration: [Histogram; 2],
    /// Queue time.
    pub queue_duration: Histogram,
    /// Execution time.
    pub compute_duration: Histogram,
    /// Batch sizes.
    pub batch_size: Histogram,
    /// Requests waiting for a worker.
    pub queue_depth: AtomicI64,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            requests: Default::default(),
            request_duration: [
                Histogram::new(&LATENCY_BUCKETS),
                Histogram::new(&LATENCY_BUCKETS),
            ],
            queue_duration: Histogram::new(&LATENCY_BUCKETS),
            compute_duration: Histogram::new(&LATENCY_BUCKETS),
            batch_size: Histogram::new(&BATCH_BUCKETS),
            queue_depth: AtomicI64::new(0),
        }
    }
}

impl ModelMetrics {
    /// Records a finished request.
    pub fn record_request(&self, protocol: Protocol, success: bool, elapsed: Duration) {
        self.requests[protocol.index()][usize::from(!success)].fetch_add(1, Ordering::Relaxed);
        self.request_duration[protocol.index()].observe_duration(elapsed);
    }
}

/// Server-wide counters.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    rejected: [AtomicU64; 2],
}

impl ServerMetrics {
    /// Counts a request that failed before a model was found.
    pub fn record_rejected(&self, protocol: Protocol) {
        self.rejected[protocol.index()].fetch_add(1, Ordering::Relaxed);
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The resident set size of this process, from `/proc/self/statm` (Linux).
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// What one scrape shows of a model.
pub struct ModelView<'a> {
    /// Name.
    pub name: &'a str,
    /// Version.
    pub version: &'a str,
    /// Its metrics.
    pub metrics: &'a ModelMetrics,
    /// The runtime's own counters ([`oxinfer_core::Model::counters`]).
    pub runtime: Vec<(&'static str, u64)>,
    /// The scheduler's counters.
    pub scheduler: &'a SchedulerCounters,
}

/// Renders the exposition text.
pub fn render(
    models: &[ModelView<'_>],
    server: &ServerMetrics,
    log_written: u64,
    log_dropped: u64,
) -> String {
    let mut out = String::with_capacity(4096 + models.len() * 8192);
    let labels = |m: &ModelView<'_>| {
        format!(
            "model=\"{}\",version=\"{}\"",
            escape(m.name),
            escape(m.version)
        )
    };
    out.push_str("# HELP oxinfer_requests_total Inference requests by model, version, protocol and outcome.\n# TYPE oxinfer_requests_total counter\n");
    for m in models {
        for p in Protocol::ALL {
            for (ix, outcome) in ["success", "failure"].iter().enumerate() {
                let n = m.metrics.requests[p.index()][ix].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "oxinfer_requests_total{{{},protocol=\"{}\",outcome=\"{outcome}\"}} {n}",
                    labels(m),
                    p.as_str()
                );
            }
        }
    }
    out.push_str("# HELP oxinfer_request_duration_seconds Time from a request's arrival to its response.\n# TYPE oxinfer_request_duration_seconds histogram\n");
    for m in models {
        for p in Protocol::ALL {
            m.metrics.request_duration[p.index()].render(
                &mut out,
                "oxinfer_request_duration_seconds",
                &format!("{},protocol=\"{}\"", labels(m), p.as_str()),
            );
        }
    }
    for (name, help, pick) in [
        (
            "oxinfer_queue_duration_seconds",
            "Time waiting for a worker thread.",
            0,
        ),
        (
            "oxinfer_compute_duration_seconds",
            "Time in the runtime's execution.",
            1,
        ),
        (
            "oxinfer_batch_size",
            "Batch size (first input dimension) of each execution.",
            2,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for m in models {
            let h = match pick {
                0 => &m.metrics.queue_duration,
                1 => &m.metrics.compute_duration,
                _ => &m.metrics.batch_size,
            };
            h.render(&mut out, name, &labels(m));
        }
    }
    out.push_str("# HELP oxinfer_queue_depth Requests waiting for a worker thread.\n# TYPE oxinfer_queue_depth gauge\n");
    for m in models {
        let _ = writeln!(
            out,
            "oxinfer_queue_depth{{{}}} {}",
            labels(m),
            m.metrics.queue_depth.load(Ordering::Relaxed)
        );
    }
    type Counter = fn(&SchedulerCounters) -> &AtomicU64;
    let scheduler_counters: [(&str, &str, Counter); 4] = [
        (
            "oxinfer_scheduler_rejected_total",
            "Requests refused because the model's queue was full.",
            |c| &c.rejected,
        ),
        (
            "oxinfer_scheduler_expired_total",
            "Requests whose timeout expired in the queue (not executed).",
            |c| &c.expired,
        ),
        (
            "oxinfer_scheduler_cancelled_total",
            "Queued requests dropped because their client went away (not executed).",
            |c| &c.cancelled,
        ),
        (
            "oxinfer_scheduler_batched_executions_total",
            "Executions that ran several requests as one batch.",
            |c| &c.batched_executions,
        ),
    ];
    for (name, help, counter) in scheduler_counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for m in models {
            let value = counter(m.scheduler).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{{}}} {value}", labels(m));
        }
    }
    out.push_str("# HELP oxinfer_runtime_value A runtime's own counters for a model (e.g. tract's plan compilations and cache hits).\n# TYPE oxinfer_runtime_value gauge\n");
    for m in models {
        for (name, value) in &m.runtime {
            let _ = writeln!(
                out,
                "oxinfer_runtime_value{{{},name=\"{name}\"}} {value}",
                labels(m)
            );
        }
    }
    out.push_str("# HELP oxinfer_requests_rejected_total Requests that failed before a model was found.\n# TYPE oxinfer_requests_rejected_total counter\n");
    for p in Protocol::ALL {
        let _ = writeln!(
            out,
            "oxinfer_requests_rejected_total{{protocol=\"{}\"}} {}",
            p.as_str(),
            server.rejected[p.index()].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP oxinfer_models_loaded Model versions ready to serve.\n# TYPE oxinfer_models_loaded gauge\noxinfer_models_loaded {}",
        models.len()
    );
    let _ = writeln!(
        out,
        "# HELP oxinfer_inference_log_records_written_total Inference log records written.\n# TYPE oxinfer_inference_log_records_written_total counter\noxinfer_inference_log_records_written_total {log_written}"
    );
    let _ = writeln!(
        out,
        "# HELP oxinfer_inference_log_records_dropped_total Inference log records dropped because the queue was full.\n# TYPE oxinfer_inference_log_records_dropped_total counter\noxinfer_inference_log_records_dropped_total {log_dropped}"
    );
    if let Some(rss) = resident_memory_bytes() {
        let _ = writeln!(
            out,
            "# HELP oxinfer_process_resident_memory_bytes Resident memory of the process.\n# TYPE oxinfer_process_resident_memory_bytes gauge\noxinfer_process_resident_memory_bytes {rss}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&BATCH_BUCKETS);
        for v in [1.0, 3.0, 3.0, 5000.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"4\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1024\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 5007\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4\n"), "{out}");
    }
}
