//! Per-model-version statistics, in the shape of Triton's statistics extension.
//!
//! Counters are atomics updated on the request path (no lock). What each duration measures in
//! oxinfer:
//! - `queue`: from the request being validated to its execution starting on a worker thread;
//! - `compute_input`: decoding checks against the model signature (validation, input ordering);
//! - `compute_infer`: the runtime's `execute` (which includes its own tensor conversions);
//! - `compute_output`: selecting and assembling the requested outputs;
//! - `success` / `fail`: the whole request, from its arrival to its response, by outcome.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A count and a cumulative duration.
#[derive(Debug, Default)]
pub(super) struct StatDuration {
    count: AtomicU64,
    ns: AtomicU64,
}

/// A snapshot of a [`StatDuration`], serialized as Triton's `{"count": n, "ns": n}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Duration64 {
    pub(crate) count: u64,
    pub(crate) ns: u64,
}

impl StatDuration {
    /// Adds one occurrence lasting `d`.
    pub(super) fn record(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Duration64 {
        Duration64 {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// The counters of one served model version.
#[derive(Debug, Default)]
pub(crate) struct ModelStats {
    pub(super) success: StatDuration,
    pub(super) fail: StatDuration,
    pub(super) queue: StatDuration,
    pub(super) compute_input: StatDuration,
    pub(super) compute_infer: StatDuration,
    pub(super) compute_output: StatDuration,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
}

/// `inference_stats` of Triton's schema.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct InferenceStats {
    pub(crate) success: Duration64,
    pub(crate) fail: Duration64,
    pub(crate) queue: Duration64,
    pub(crate) compute_input: Duration64,
    pub(crate) compute_infer: Duration64,
    pub(crate) compute_output: Duration64,
    /// Response cache hits (no cache: always zero).
    pub(crate) cache_hit: Duration64,
    /// Response cache misses (no cache: always zero).
    pub(crate) cache_miss: Duration64,
}

/// A snapshot of a model version's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StatsSnapshot {
    /// Milliseconds since the epoch of the last successful inference (0 if none).
    pub(crate) last_inference: u64,
    pub(crate) inference_count: u64,
    pub(crate) execution_count: u64,
    pub(crate) inference_stats: InferenceStats,
}

impl ModelStats {
    /// Records one execution of `batch` inferences that succeeded.
    pub(super) fn record_execution(&self, batch: u64) {
        self.inference_count.fetch_add(batch, Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    /// The current values.
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            last_inference: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            inference_stats: InferenceStats {
                success: self.success.snapshot(),
                fail: self.fail.snapshot(),
                queue: self.queue.snapshot(),
                compute_input: self.compute_input.snapshot(),
                compute_infer: self.compute_infer.snapshot(),
                compute_output: self.compute_output.snapshot(),
                cache_hit: Duration64::default(),
                cache_miss: Duration64::default(),
            },
        }
    }
}
