//! Prometheus metrics (`GET /metrics`, text format 0.0.4), every oxinfer name prefixed
//! `oxinfer_`, encoded by the `prometheus` crate.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `oxinfer_requests_total` | counter | model, version, protocol, outcome | inference requests by outcome (`success` / `failure`); `protocol` is the API: `http` (OIP REST), `grpc`, `openai`, `tei` |
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
//! | `oxinfer_inference_log_records_dropped_total` | counter | | inference-log records dropped (queue full with `on_full = "drop"`, or writes failing for too long) |
//! | `oxinfer_inference_log_write_errors_total` | counter | | failed writes to the log file (disk full, I/O error); the records are retried |
//! | `oxinfer_manifest_reloads_total` | counter | outcome | manifest reloads (SIGHUP, `--watch`): `success` (every change applied) or `failure` (the manifest was refused, or a model failed to load and kept its previous state) |
//! | `oxinfer_inflight_bytes` | gauge | | bytes held by requests in flight, against `max_inflight_bytes` |
//! | `oxinfer_inflight_bytes_limit` | gauge | | `[server] max_inflight_bytes` |
//! | `oxinfer_inflight_refused_total` | counter | | requests refused because the in-flight budget was spent (503 / `RESOURCE_EXHAUSTED`) |
//! | `oxinfer_process_resident_memory_bytes` | gauge | | resident set size of the process |
//!
//! Plus the standard `process_*` metrics of the `prometheus` crate's process collector
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`, ...).
//!
//! A scrape builds a registry from the models ready at that moment, so an unloaded model's
//! series disappear, and a reloaded model's restart from zero.

use prometheus::core::Collector;
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::budget::MemoryBudget;
use crate::telemetry::inference_log::LogCounters;
use crate::telemetry::{ModelTelemetry, ServerMetrics};

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn register(registry: &Registry, collector: Box<dyn Collector>) {
    if let Err(e) = registry.register(collector) {
        tracing::warn!("metrics: a series could not be exposed: {e}");
    }
}

/// What a scrape shows of one served model version.
pub(crate) struct ModelSeries<'a> {
    pub(crate) name: &'a str,
    pub(crate) version: &'a str,
    pub(crate) telemetry: &'a ModelTelemetry,
    /// The runtime's own counters (`Model::counters`).
    pub(crate) runtime: Vec<(&'static str, u64)>,
}

/// The runtime's own counters of one model version, as `oxinfer_runtime_value{name=...}`.
fn runtime_values(model: &ModelSeries<'_>) -> IntGaugeVec {
    let gauges = IntGaugeVec::new(
        Opts::new(
            "oxinfer_runtime_value",
            "A runtime's own counters for a model (e.g. tract's plan compilations and cache hits).",
        )
        .const_label("model", model.name)
        .const_label("version", model.version),
        &["name"],
    )
    .expect("valid gauge options");
    for &(name, value) in &model.runtime {
        gauges
            .with_label_values(&[name])
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }
    gauges
}

fn server_gauge(name: &str, help: &str, value: i64) -> IntGauge {
    let gauge = IntGauge::new(name, help).expect("valid gauge options");
    gauge.set(value);
    gauge
}

fn server_counter(name: &str, help: &str, value: u64) -> IntCounter {
    let counter = IntCounter::new(name, help).expect("valid counter options");
    counter.inc_by(value);
    counter
}

/// The resident set size the process collector reads (from `/proc`, with the system's page
/// size), republished under the name documented before the standard metrics existed.
fn resident_memory(families: &[prometheus::proto::MetricFamily]) -> Option<i64> {
    let family = families
        .iter()
        .find(|f| f.name() == "process_resident_memory_bytes")?;
    let value = family.get_metric().first()?.get_gauge().get_value();
    Some(value as i64)
}

/// Renders the exposition text for the models being served.
pub(crate) fn render(
    models: &[ModelSeries<'_>],
    server: &ServerMetrics,
    connections: &crate::listen::ConnectionMetrics,
    auth_failures: &prometheus::IntCounterVec,
    budget: &MemoryBudget,
    reloads: (u64, u64),
    log: Option<&LogCounters>,
) -> String {
    let registry = Registry::new();
    for model in models {
        for collector in model.telemetry.collectors() {
            register(&registry, collector);
        }
        register(&registry, Box::new(runtime_values(model)));
    }
    register(&registry, Box::new(server.rejected.clone()));
    register(&registry, Box::new(connections.open.clone()));
    register(&registry, Box::new(connections.dropped.clone()));
    register(&registry, Box::new(connections.over_limit.clone()));
    register(&registry, Box::new(auth_failures.clone()));
    let (written, dropped, write_errors) = log.map_or((0, 0, 0), LogCounters::totals);
    register(
        &registry,
        Box::new(server_gauge(
            "oxinfer_models_loaded",
            "Model versions ready to serve.",
            models.len() as i64,
        )),
    );
    let reloads_total = prometheus::IntCounterVec::new(
        Opts::new(
            "oxinfer_manifest_reloads_total",
            "Manifest reloads (SIGHUP, --watch) by outcome.",
        ),
        &["outcome"],
    )
    .expect("valid counter options");
    reloads_total
        .with_label_values(&["success"])
        .inc_by(reloads.0);
    reloads_total
        .with_label_values(&["failure"])
        .inc_by(reloads.1);
    register(&registry, Box::new(reloads_total));
    register(
        &registry,
        Box::new(server_gauge(
            "oxinfer_inflight_bytes",
            "Bytes held by requests in flight (bodies, tensors, responses, log records).",
            budget.used() as i64,
        )),
    );
    register(
        &registry,
        Box::new(server_gauge(
            "oxinfer_inflight_bytes_limit",
            "The budget of bytes for requests in flight (max_inflight_bytes).",
            budget.limit() as i64,
        )),
    );
    register(
        &registry,
        Box::new(server_counter(
            "oxinfer_inflight_refused_total",
            "Requests refused because the in-flight budget was spent.",
            budget.refused(),
        )),
    );
    register(
        &registry,
        Box::new(server_counter(
            "oxinfer_inference_log_records_written_total",
            "Inference log records written.",
            written,
        )),
    );
    register(
        &registry,
        Box::new(server_counter(
            "oxinfer_inference_log_records_dropped_total",
            "Inference log records dropped because the queue was full.",
            dropped,
        )),
    );
    register(
        &registry,
        Box::new(server_counter(
            "oxinfer_inference_log_write_errors_total",
            "Failed writes to the inference log file (records kept and retried).",
            write_errors,
        )),
    );
    #[cfg(target_os = "linux")]
    {
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Some(rss) = resident_memory(&process.collect()) {
            register(
                &registry,
                Box::new(server_gauge(
                    "oxinfer_process_resident_memory_bytes",
                    "Resident memory of the process.",
                    rss,
                )),
            );
        }
        register(&registry, Box::new(process));
    }
    let mut out = Vec::with_capacity(4096 + models.len() * 8192);
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!("metrics: cannot encode the exposition: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::telemetry::{ModelTelemetry, Protocol};

    fn text(telemetry: &ModelTelemetry) -> String {
        let registry = Registry::new();
        for c in telemetry.collectors() {
            registry.register(c).unwrap();
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_labelled() {
        let t = ModelTelemetry::new("m", "1");
        for rows in [1, 3, 3, 5000] {
            t.executed(rows, std::time::Instant::now());
        }
        let out = text(&t);
        let bucket = |le: &str, n: u64| {
            format!("oxinfer_batch_size_bucket{{model=\"m\",version=\"1\",le=\"{le}\"}} {n}\n")
        };
        for (le, n) in [("1", 1), ("4", 3), ("1024", 3), ("+Inf", 4)] {
            assert!(out.contains(&bucket(le, n)), "{out}");
        }
        assert!(
            out.contains("oxinfer_batch_size_sum{model=\"m\",version=\"1\"} 5007\n"),
            "{out}"
        );
        assert!(
            out.contains("oxinfer_batch_size_count{model=\"m\",version=\"1\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE oxinfer_batch_size histogram\n"),
            "{out}"
        );
    }

    #[test]
    fn one_record_feeds_statistics_and_metrics() {
        let t = ModelTelemetry::new("m", "1");
        t.request(Protocol::Grpc, true, Duration::from_millis(2));
        t.request(Protocol::Http, false, Duration::from_millis(1));
        t.queued(Duration::from_micros(30));
        let out = text(&t);
        for line in [
            "oxinfer_requests_total{model=\"m\",outcome=\"success\",protocol=\"grpc\",version=\"1\"} 1",
            "oxinfer_requests_total{model=\"m\",outcome=\"failure\",protocol=\"http\",version=\"1\"} 1",
            "oxinfer_requests_total{model=\"m\",outcome=\"success\",protocol=\"http\",version=\"1\"} 0",
            "oxinfer_queue_duration_seconds_count{model=\"m\",version=\"1\"} 1",
        ] {
            assert!(out.contains(line), "{line} not in\n{out}");
        }
        let s = t.stats().inference_stats;
        assert_eq!((s.success.count, s.success.ns), (1, 2_000_000));
        assert_eq!((s.fail.count, s.fail.ns), (1, 1_000_000));
        assert_eq!((s.queue.count, s.queue.ns), (1, 30_000));
    }
}
