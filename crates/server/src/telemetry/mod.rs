//! What the server records about the requests it serves.
//!
//! - [`ModelTelemetry`]: the one place a model version's timings and counts are recorded (in
//!   per-thread shards, [`shards`]); the Triton statistics ([`stats`]) and the Prometheus
//!   metrics ([`metrics`]) are two views of it;
//! - [`metrics`]: `GET /metrics`, rendered per scrape from the models being served;
//! - [`inference_log`]: the tamper-evident record of every request, its writer and verifier.

pub mod inference_log;
pub(crate) mod metrics;
mod shards;
pub(crate) mod stats;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use shards::{Count, HistogramCells, HistogramTotals, Sharded};
use stats::{Duration64, InferenceStats, StatsSnapshot};

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

/// Upper bounds (seconds) of the latency histograms' buckets, as exposed.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// [`LATENCY_BUCKETS`] in nanoseconds, as observed, and `+Inf`.
const LATENCY_BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
    u64::MAX,
];

/// Upper bounds of the batch size histogram's buckets, and `+Inf`.
const BATCH_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, u64::MAX];

/// A latency histogram's copy in one shard.
type Latency = HistogramCells<17>;

/// A count and a cumulative duration in nanoseconds.
#[derive(Debug, Default)]
struct Timed {
    count: Count,
    ns: Count,
}

impl Timed {
    fn record(&self, d: Duration) {
        self.count.add(1);
        self.ns.add(shards::nanos(d));
    }

    /// Adds this copy's count and duration to `total`.
    fn add_to(&self, total: &mut Duration64) {
        total.count = total.count.wrapping_add(self.count.get());
        total.ns = total.ns.wrapping_add(self.ns.get());
    }
}

/// One shard's copy of the counters that every request updates ([`shards`]). The Triton
/// statistics and the Prometheus series are both read from them: a statistic that a series
/// also counts (the queue and compute times, executions and inferences) is not counted twice.
#[derive(Debug, Default)]
struct Cells {
    /// `[protocol][success, failure]`.
    requests: [[Count; 2]; Protocol::ALL.len()],
    /// Per protocol, both outcomes.
    request_duration: [Latency; Protocol::ALL.len()],
    /// All protocols, by outcome (the counts are `requests`').
    success_ns: Count,
    fail_ns: Count,
    queue: Latency,
    compute: Latency,
    /// Rows per execution: its count is the executions, its sum the inferences.
    batch: HistogramCells<11>,
    compute_input: Timed,
    compute_output: Timed,
    /// When this shard's last successful execution ended, in nanoseconds after [`clock_base`]
    /// plus one (0: never): an execution's end is already on the monotonic clock, and the wall
    /// clock is read only when the statistics are.
    last_inference: AtomicU64,
}

/// [`Cells`] added up over the shards.
#[derive(Debug, Default)]
struct Totals {
    requests: [[u64; 2]; Protocol::ALL.len()],
    request_duration: [HistogramTotals<17>; Protocol::ALL.len()],
    success_ns: u64,
    fail_ns: u64,
    queue: HistogramTotals<17>,
    compute: HistogramTotals<17>,
    batch: HistogramTotals<11>,
    compute_input: Duration64,
    compute_output: Duration64,
    last_inference: u64,
}

/// The instant [`Cells::last_inference`] counts from: a day before the first time it is
/// needed, so that every execution ends after it.
fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
    })
}

/// An instant as [`Cells::last_inference`] holds it.
fn since_base(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(clock_base()).as_nanos())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// Milliseconds since the epoch of an instant held as [`since_base`] gives it (0 stays 0, for
/// never): the wall clock now, less the time since then on the monotonic clock.
fn epoch_ms(held: u64) -> u64 {
    if held == 0 {
        return 0;
    }
    let at = clock_base() + Duration::from_nanos(held - 1);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    wall.saturating_sub(at.elapsed()).as_millis() as u64
}

/// The names and help of the series read from [`Cells`].
const REQUESTS: (&str, &str) = (
    "oxinfer_requests_total",
    "Inference requests by model, version, protocol and outcome.",
);
const REQUEST_DURATION: (&str, &str) = (
    "oxinfer_request_duration_seconds",
    "Time from a request's arrival to its response.",
);
const QUEUE_DURATION: (&str, &str) = (
    "oxinfer_queue_duration_seconds",
    "Time waiting for a worker thread.",
);
const COMPUTE_DURATION: (&str, &str) = (
    "oxinfer_compute_duration_seconds",
    "Time in the runtime's execution.",
);
const BATCH_SIZE: (&str, &str) = (
    "oxinfer_batch_size",
    "Batch size (first input dimension) of each execution.",
);

/// Everything recorded about one served model version: its Triton statistics and its Prometheus
/// series (labelled `model`, `version`). Created with the loaded instance, so both restart from
/// zero when a model is reloaded (Prometheus handles counter resets).
#[derive(Debug)]
pub(crate) struct ModelTelemetry {
    model: String,
    version: String,
    /// What every request updates, per shard.
    cells: Sharded<Cells>,
    /// The descriptors of the series read from `cells`, for the registry of a scrape.
    descs: Vec<Desc>,
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

fn counter(name: &str, help: &str, model: &str, version: &str) -> IntCounter {
    IntCounter::with_opts(opts(name, help, model, version)).expect("valid counter options")
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

fn family((name, help): (&str, &str), kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

/// A histogram's series: `bounds` are the exposed upper bounds, `totals` has one more bucket
/// (`+Inf`); the sum is divided by `per_unit` into the exposed unit (a division, so that a
/// whole number of nanoseconds is written as the shortest decimal of its seconds).
fn histogram_metric<const N: usize>(
    labels: Vec<LabelPair>,
    bounds: &[f64],
    totals: &HistogramTotals<N>,
    per_unit: f64,
) -> Metric {
    let mut cumulative = 0u64;
    let buckets = bounds
        .iter()
        .zip(&totals.buckets)
        .map(|(&bound, &n)| {
            cumulative = cumulative.wrapping_add(n);
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(bound);
            bucket.set_cumulative_count(cumulative);
            bucket
        })
        .collect();
    let mut histogram = prometheus::proto::Histogram::default();
    histogram.set_sample_count(totals.count());
    histogram.set_sample_sum(totals.sum as f64 / per_unit);
    histogram.set_bucket(buckets);
    let mut metric = Metric::from_label(labels);
    metric.set_histogram(histogram);
    metric
}

/// The series read from [`Cells`], as of one scrape.
struct CellSeries {
    descs: Vec<Desc>,
    families: Vec<MetricFamily>,
}

impl Collector for CellSeries {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families.clone()
    }
}

impl ModelTelemetry {
    /// The series of model `name`, version `version`, all at zero.
    pub(crate) fn new(name: &str, version: &str) -> Self {
        let labels: std::collections::HashMap<String, String> = [
            ("model".to_string(), name.to_string()),
            ("version".to_string(), version.to_string()),
        ]
        .into();
        let desc = |(fq_name, help): (&str, &str), variable: &[&str]| {
            Desc::new(
                fq_name.to_string(),
                help.to_string(),
                variable.iter().map(|l| l.to_string()).collect(),
                labels.clone(),
            )
            .expect("valid descriptor")
        };
        ModelTelemetry {
            model: name.to_string(),
            version: version.to_string(),
            cells: Sharded::new(),
            descs: vec![
                desc(REQUESTS, &["protocol", "outcome"]),
                desc(REQUEST_DURATION, &["protocol"]),
                desc(QUEUE_DURATION, &[]),
                desc(COMPUTE_DURATION, &[]),
                desc(BATCH_SIZE, &[]),
            ],
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

    /// A finished request, from its arrival to its response, by outcome.
    pub(crate) fn request(&self, protocol: Protocol, success: bool, elapsed: Duration) {
        let cells = self.cells.local();
        let p = protocol as usize;
        cells.requests[p][usize::from(!success)].add(1);
        let ns = shards::nanos(elapsed);
        cells.request_duration[p].observe(&LATENCY_BOUNDS_NS, ns);
        if success {
            cells.success_ns.add(ns);
        } else {
            cells.fail_ns.add(ns);
        }
    }

    /// The request's time from its arrival in the pipeline to the end of its input checks.
    pub(crate) fn input_checked(&self, elapsed: Duration) {
        self.cells.local().compute_input.record(elapsed);
    }

    /// The time a request waited in the queue (executed or expired there).
    pub(crate) fn queued(&self, waited: Duration) {
        let ns = shards::nanos(waited);
        self.cells.local().queue.observe(&LATENCY_BOUNDS_NS, ns);
    }

    /// One call of the runtime's `execute`.
    pub(crate) fn computed(&self, elapsed: Duration) {
        let ns = shards::nanos(elapsed);
        self.cells.local().compute.observe(&LATENCY_BOUNDS_NS, ns);
    }

    /// A successful execution of `rows` inferences (one request, or several batched) that
    /// ended at `done`.
    pub(crate) fn executed(&self, rows: u64, done: Instant) {
        let cells = self.cells.local();
        cells.batch.observe(&BATCH_BOUNDS, rows);
        cells
            .last_inference
            .store(since_base(done), Ordering::Relaxed);
    }

    /// The selection and assembly of the requested outputs.
    pub(crate) fn output_assembled(&self, elapsed: Duration) {
        self.cells.local().compute_output.record(elapsed);
    }

    /// The number of requests waiting for a worker now.
    pub(crate) fn queue_depth(&self, n: usize) {
        self.queue_depth.set(n as i64);
    }

    /// Every shard's counters added up.
    fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for cells in self.cells.each() {
            for (total, counts) in t.requests.iter_mut().zip(&cells.requests) {
                for (n, count) in total.iter_mut().zip(counts) {
                    *n = n.wrapping_add(count.get());
                }
            }
            for (total, h) in t.request_duration.iter_mut().zip(&cells.request_duration) {
                total.add(h);
            }
            t.success_ns = t.success_ns.wrapping_add(cells.success_ns.get());
            t.fail_ns = t.fail_ns.wrapping_add(cells.fail_ns.get());
            t.queue.add(&cells.queue);
            t.compute.add(&cells.compute);
            t.batch.add(&cells.batch);
            t.last_inference = t
                .last_inference
                .max(cells.last_inference.load(Ordering::Relaxed));
            cells.compute_input.add_to(&mut t.compute_input);
            cells.compute_output.add_to(&mut t.compute_output);
        }
        t
    }

    /// The Triton statistics view.
    pub(crate) fn stats(&self) -> StatsSnapshot {
        let t = self.totals();
        let outcome = |o: usize, ns: u64| Duration64 {
            count: t.requests.iter().fold(0u64, |n, r| n.wrapping_add(r[o])),
            ns,
        };
        StatsSnapshot {
            last_inference: epoch_ms(t.last_inference),
            inference_count: t.batch.sum,
            execution_count: t.batch.count(),
            inference_stats: InferenceStats {
                success: outcome(0, t.success_ns),
                fail: outcome(1, t.fail_ns),
                queue: Duration64 {
                    count: t.queue.count(),
                    ns: t.queue.sum,
                },
                compute_input: t.compute_input,
                compute_infer: Duration64 {
                    count: t.compute.count(),
                    ns: t.compute.sum,
                },
                compute_output: t.compute_output,
                cache_hit: Duration64::default(),
                cache_miss: Duration64::default(),
            },
        }
    }

    /// The Prometheus view: every series of this model version.
    pub(crate) fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.cell_series()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.rejected.clone()),
            Box::new(self.expired.clone()),
            Box::new(self.cancelled.clone()),
            Box::new(self.batched_executions.clone()),
        ]
    }

    /// The series read from the shards' counters, labelled as the `prometheus` crate labels
    /// (label pairs sorted by name).
    fn cell_series(&self) -> CellSeries {
        let t = self.totals();
        let model = || label("model", &self.model);
        let version = || label("version", &self.version);
        let requests = Protocol::ALL
            .iter()
            .zip(&t.requests)
            .flat_map(|(p, counts)| {
                ["success", "failure"]
                    .iter()
                    .zip(counts)
                    .map(move |(outcome, &n)| (p, outcome, n))
            })
            .map(|(p, outcome, n)| {
                let labels = vec![
                    model(),
                    label("outcome", outcome),
                    label("protocol", p.as_str()),
                    version(),
                ];
                let mut counter = prometheus::proto::Counter::default();
                counter.set_value(n as f64);
                let mut metric = Metric::from_label(labels);
                metric.set_counter(counter);
                metric
            })
            .collect();
        let request_duration = Protocol::ALL
            .iter()
            .zip(&t.request_duration)
            .map(|(p, h)| {
                let labels = vec![model(), label("protocol", p.as_str()), version()];
                histogram_metric(labels, &LATENCY_BUCKETS, h, 1e9)
            })
            .collect();
        let alone = |h: &HistogramTotals<17>| {
            vec![histogram_metric(
                vec![model(), version()],
                &LATENCY_BUCKETS,
                h,
                1e9,
            )]
        };
        let batch_bounds: Vec<f64> = BATCH_BOUNDS[..BATCH_BOUNDS.len() - 1]
            .iter()
            .map(|&b| b as f64)
            .collect();
        CellSeries {
            descs: self.descs.clone(),
            families: vec![
                family(REQUESTS, MetricType::COUNTER, requests),
                family(REQUEST_DURATION, MetricType::HISTOGRAM, request_duration),
                family(QUEUE_DURATION, MetricType::HISTOGRAM, alone(&t.queue)),
                family(COMPUTE_DURATION, MetricType::HISTOGRAM, alone(&t.compute)),
                family(
                    BATCH_SIZE,
                    MetricType::HISTOGRAM,
                    vec![histogram_metric(
                        vec![model(), version()],
                        &batch_bounds,
                        &t.batch,
                        1.0,
                    )],
                ),
            ],
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_bounds_are_the_exposed_ones() {
        for (secs, ns) in LATENCY_BUCKETS.iter().zip(LATENCY_BOUNDS_NS) {
            assert_eq!((secs * 1e9).round() as u64, ns);
        }
        assert_eq!(LATENCY_BOUNDS_NS.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(LATENCY_BOUNDS_NS.last(), Some(&u64::MAX));
        assert_eq!(BATCH_BOUNDS.last(), Some(&u64::MAX));
    }

    #[test]
    fn statistics_are_read_from_the_series_counts() {
        let t = ModelTelemetry::new("m", "1");
        t.input_checked(Duration::from_micros(2));
        t.queued(Duration::from_micros(50));
        t.queued(Duration::from_micros(51));
        t.computed(Duration::from_micros(7));
        let now = Instant::now();
        t.executed(3, now - Duration::from_secs(3));
        t.executed(4, now - Duration::from_secs(2));
        t.output_assembled(Duration::from_nanos(900));
        // Recorded from another thread (another shard): added up with the rest.
        std::thread::scope(|s| {
            s.spawn(|| t.request(Protocol::Tei, true, Duration::from_micros(100)));
        });
        t.request(Protocol::Http, true, Duration::from_nanos(438_773));
        t.request(Protocol::Grpc, false, Duration::from_secs(11));
        let s = t.stats();
        assert_eq!((s.inference_count, s.execution_count), (7, 2));
        // The last execution's end on the wall clock: two seconds ago.
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ago = wall_ms.abs_diff(s.last_inference + 2000);
        assert!(ago < 500, "last_inference is {} ms off", ago);
        assert_eq!(ModelTelemetry::new("n", "1").stats().last_inference, 0);
        let i = s.inference_stats;
        assert_eq!((i.queue.count, i.queue.ns), (2, 101_000));
        assert_eq!((i.compute_infer.count, i.compute_infer.ns), (1, 7_000));
        assert_eq!((i.compute_input.count, i.compute_input.ns), (1, 2_000));
        assert_eq!((i.compute_output.count, i.compute_output.ns), (1, 900));
        assert_eq!((i.success.count, i.success.ns), (2, 538_773));
        assert_eq!((i.fail.count, i.fail.ns), (1, 11_000_000_000));

        let registry = prometheus::Registry::new();
        for c in t.collectors() {
            registry.register(c).unwrap();
        }
        // A second model's series go in the same registry.
        for c in ModelTelemetry::new("m", "2").collectors() {
            registry.register(c).unwrap();
        }
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        let http = "model=\"m\",protocol=\"http\",version=\"1\"";
        let grpc = "model=\"m\",protocol=\"grpc\",version=\"1\"";
        for line in [
            "# TYPE oxinfer_request_duration_seconds histogram".to_string(),
            format!("oxinfer_request_duration_seconds_bucket{{{http},le=\"0.0005\"}} 1"),
            format!("oxinfer_request_duration_seconds_bucket{{{http},le=\"+Inf\"}} 1"),
            format!("oxinfer_request_duration_seconds_bucket{{{http},le=\"0.00025\"}} 0"),
            format!("oxinfer_request_duration_seconds_sum{{{http}}} 0.000438773"),
            format!("oxinfer_request_duration_seconds_bucket{{{grpc},le=\"10\"}} 0"),
            format!("oxinfer_request_duration_seconds_bucket{{{grpc},le=\"+Inf\"}} 1"),
            format!("oxinfer_request_duration_seconds_count{{{grpc}}} 1"),
            "oxinfer_queue_duration_seconds_bucket{model=\"m\",version=\"1\",le=\"0.00005\"} 1"
                .to_string(),
            "oxinfer_queue_duration_seconds_bucket{model=\"m\",version=\"1\",le=\"0.0001\"} 2"
                .to_string(),
            "oxinfer_compute_duration_seconds_count{model=\"m\",version=\"1\"} 1".to_string(),
            "oxinfer_batch_size_sum{model=\"m\",version=\"1\"} 7".to_string(),
            "oxinfer_requests_total{model=\"m\",outcome=\"success\",protocol=\"tei\",version=\"1\"} 1"
                .to_string(),
            "oxinfer_requests_total{model=\"m\",outcome=\"failure\",protocol=\"grpc\",version=\"2\"} 0"
                .to_string(),
            "# HELP oxinfer_compute_duration_seconds Time in the runtime's execution.".to_string(),
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line} not in\n{out}");
        }
        // The exposed bounds and nothing else.
        assert_eq!(
            out.matches(&format!("oxinfer_request_duration_seconds_bucket{{{http},"))
                .count(),
            LATENCY_BUCKETS.len() + 1
        );
    }
}
