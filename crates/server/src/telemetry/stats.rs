//! Per-model-version statistics, in the shape of Triton's statistics extension.
//!
//! The counts come from [`super::ModelTelemetry`]'s per-thread counters, added up when the
//! statistics are asked for. What each duration measures in oxinfer:
//! - `queue`: from the request being validated to its execution starting on a worker thread;
//! - `compute_input`: decoding checks against the model signature (validation, input ordering);
//! - `compute_infer`: the runtime's `execute` (which includes its own tensor conversions);
//! - `compute_output`: selecting and assembling the requested outputs;
//! - `success` / `fail`: the whole request, from its arrival to its response, by outcome.

use serde::Serialize;

/// A count and a cumulative duration, serialized as Triton's `{"count": n, "ns": n}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Duration64 {
    pub(crate) count: u64,
    pub(crate) ns: u64,
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
