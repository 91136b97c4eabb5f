//! Counters that the request threads update without sharing cache lines.
//!
//! Every request adds to about twenty counters of its model (the Triton statistics and the
//! Prometheus series). Kept in one place, each addition is an atomic operation on a cache line
//! that the other cores wrote a moment ago, so under load the lines travel between the cores
//! at every request. Here each model's counters are split into [`SHARDS`] copies, and a thread
//! adds to the copy of its own shard (threads take shards in turn as they first record
//! something), so that the I/O threads of a busy server each write their own lines. A reader
//! (a scrape, a statistics request) adds the copies up.
//!
//! A shard's copy is allocated when a thread of that shard first records for the model, so a
//! model that is loaded but not called costs [`SHARDS`] pointers.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How many copies a model's counters are split into: the threads that record at once are the
/// I/O threads (one per core) and the models' worker threads, so up to 64 of them write lines
/// of their own; two threads that share a shard are still counted exactly. An unused shard
/// costs a model 16 bytes.
pub(crate) const SHARDS: usize = 64;

/// The shard the next thread to record takes.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, taken on its first record.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The calling thread's shard.
fn shard() -> usize {
    SHARD.with(|shard| {
        let mut index = shard.get();
        if index == usize::MAX {
            index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
            shard.set(index);
        }
        index
    })
}

/// `T` split into [`SHARDS`] copies, each allocated when a thread of its shard first uses it.
pub(crate) struct Sharded<T> {
    shards: [OnceLock<Box<T>>; SHARDS],
}

impl<T: Default> Sharded<T> {
    /// No copy yet.
    pub(crate) fn new() -> Self {
        Sharded {
            shards: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The calling thread's copy.
    pub(crate) fn local(&self) -> &T {
        self.shards[shard()].get_or_init(Box::default)
    }

    /// Every copy allocated so far.
    pub(crate) fn each(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().filter_map(|s| s.get().map(|b| &**b))
    }
}

impl<T> std::fmt::Debug for Sharded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self.shards.iter().filter(|s| s.get().is_some()).count();
        f.debug_struct("Sharded").field("used", &used).finish()
    }
}

/// A relaxed atomic counter.
#[derive(Debug, Default)]
pub(crate) struct Count(AtomicU64);

impl Count {
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A duration in whole nanoseconds (saturating at `u64::MAX`, 584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One copy of a histogram over integer values (nanoseconds, rows): a count per bucket, the
/// last bucket for values above every bound (`+Inf`), and the values' sum. `N` is the number of
/// bounds plus one.
#[derive(Debug)]
pub(crate) struct HistogramCells<const N: usize> {
    buckets: [Count; N],
    sum: Count,
}

impl<const N: usize> Default for HistogramCells<N> {
    fn default() -> Self {
        HistogramCells {
            buckets: std::array::from_fn(|_| Count::default()),
            sum: Count::default(),
        }
    }
}

impl<const N: usize> HistogramCells<N> {
    /// Counts `value` in the first bucket whose bound is at least `value` (Prometheus' `le`).
    pub(crate) fn observe(&self, bounds: &[u64; N], value: u64) {
        let bucket = bounds.iter().position(|&b| value <= b).unwrap_or(N - 1);
        self.buckets[bucket].add(1);
        self.sum.add(value);
    }
}

/// A histogram added up over the copies: per-bucket counts (not cumulative), count and sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HistogramTotals<const N: usize> {
    pub(crate) buckets: [u64; N],
    pub(crate) sum: u64,
}

impl<const N: usize> Default for HistogramTotals<N> {
    fn default() -> Self {
        HistogramTotals {
            buckets: [0; N],
            sum: 0,
        }
    }
}

impl<const N: usize> HistogramTotals<N> {
    /// Adds one copy's counts.
    pub(crate) fn add(&mut self, cells: &HistogramCells<N>) {
        for (total, cell) in self.buckets.iter_mut().zip(&cells.buckets) {
            *total = total.wrapping_add(cell.get());
        }
        self.sum = self.sum.wrapping_add(cells.sum.get());
    }

    /// How many values were observed.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().fold(0, |n, &b| n.wrapping_add(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_take_shards_in_turn_and_totals_add_up() {
        let sharded = std::sync::Arc::new(Sharded::<Count>::new());
        let threads: Vec<_> = (0..SHARDS + 3)
            .map(|_| {
                let sharded = sharded.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        sharded.local().add(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // More threads than shards: some share one, and each addition is counted once.
        assert_eq!(
            sharded.each().map(Count::get).sum::<u64>(),
            1000 * (SHARDS as u64 + 3)
        );
        let used = sharded.each().count();
        assert!((1..=SHARDS).contains(&used), "{used}");
        assert!(format!("{sharded:?}").contains(&format!("used: {used}")));
    }

    #[test]
    fn an_unused_model_has_no_copies() {
        let sharded = Sharded::<HistogramCells<3>>::new();
        assert_eq!(sharded.each().count(), 0);
    }

    #[test]
    fn values_fall_in_the_first_bucket_whose_bound_holds_them() {
        let bounds = [10, 20, u64::MAX];
        let cells = HistogramCells::<3>::default();
        for v in [0, 10, 11, 20, 21, 1000] {
            cells.observe(&bounds, v);
        }
        let mut totals = HistogramTotals::default();
        totals.add(&cells);
        totals.add(&cells);
        assert_eq!(totals.buckets, [4, 4, 4]);
        assert_eq!(totals.count(), 12);
        assert_eq!(totals.sum, 2 * 1062);
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(nanos(Duration::from_micros(3)), 3000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
