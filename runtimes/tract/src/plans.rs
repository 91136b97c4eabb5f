//! One compiled tract plan per concrete input-shape signature, for models that tract cannot
//! analyse with their dynamic dimensions left symbolic.
//!
//! - Plans are compiled on first use and kept in a bounded LRU cache.
//! - Concurrent first requests of one new signature share one compilation: each signature has a
//!   slot (`OnceLock`); the first caller compiles inside it, the others wait on it.
//! - A signature whose compilation fails is remembered (bounded) and answered with the same 400
//!   at once; it is never retried and does not touch other signatures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use oxinfer_core::{Error, Result};
use tract_onnx::prelude::*;

/// Concrete shapes of every input, in signature order.
pub(crate) type ShapeKey = Vec<Vec<usize>>;

type Slot = Arc<OnceLock<std::result::Result<Arc<TypedSimplePlan>, String>>>;

/// How many failed signatures are remembered.
const MAX_FAILURES: usize = 256;

/// Compiles one plan for one signature.
pub(crate) type Compiler = dyn Fn(&ShapeKey) -> TractResult<Arc<TypedSimplePlan>> + Send + Sync;

#[derive(Default)]
struct State {
    /// Signature -> (slot, last use).
    plans: HashMap<ShapeKey, (Slot, u64)>,
    failures: HashMap<ShapeKey, String>,
    clock: u64,
}

/// The cache, its compiler and its counters.
pub(crate) struct ShapeCache {
    compile: Box<Compiler>,
    capacity: usize,
    state: Mutex<State>,
    compilations: AtomicU64,
    hits: AtomicU64,
    evictions: AtomicU64,
    model: String,
}

/// A snapshot of a cache's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheCounters {
    pub compilations: u64,
    pub hits: u64,
    pub evictions: u64,
    pub cached: u64,
}

fn show(key: &ShapeKey) -> String {
    format!("{key:?}")
}

impl ShapeCache {
    pub(crate) fn new(model: &str, capacity: usize, compile: Box<Compiler>) -> ShapeCache {
        ShapeCache {
            compile,
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            compilations: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            model: model.to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters and a map behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The plan for `key`, compiling it (once, whoever asks concurrently) when it is not cached.
    pub(crate) fn get(&self, key: &ShapeKey) -> Result<Arc<TypedSimplePlan>> {
        let slot = {
            let mut state = self.lock();
            if let Some(reason) = state.failures.get(key) {
                return Err(Error::invalid(reason.clone()));
            }
            state.clock += 1;
            let now = state.clock;
            if let Some((slot, used)) = state.plans.get_mut(key) {
                *used = now;
                self.hits.fetch_add(1, Ordering::Relaxed);
                slot.clone()
            } else {
                let slot: Slot = Arc::default();
                state.plans.insert(key.clone(), (slot.clone(), now));
                if state.plans.len() > self.capacity {
                    let oldest = state
                        .plans
                        .iter()
                        .filter(|(k, _)| *k != key)
                        .min_by_key(|(_, (_, used))| *used)
                        .map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        state.plans.remove(&oldest);
                        self.evictions.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(model = %self.model, shapes = %show(&oldest), "plan evicted");
                    }
                }
                slot
            }
        };
        let result = slot.get_or_init(|| {
            let started = Instant::now();
            self.compilations.fetch_add(1, Ordering::Relaxed);
            let compiled = (self.compile)(key).map_err(|e| {
                format!(
                    "tract cannot compile the model for input shapes {}: {e:#}",
                    show(key)
                )
            });
            match &compiled {
                Ok(_) => tracing::info!(
                    model = %self.model,
                    shapes = %show(key),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "compiled a plan for new input shapes"
                ),
                Err(e) => tracing::warn!(model = %self.model, "{e}"),
            }
            compiled
        });
        match result {
            Ok(plan) => Ok(plan.clone()),
            Err(reason) => {
                let mut state = self.lock();
                state.plans.remove(key);
                if state.failures.len() >= MAX_FAILURES {
                    let any = state.failures.keys().next().cloned();
                    if let Some(any) = any {
                        state.failures.remove(&any);
                    }
                }
                state.failures.insert(key.clone(), reason.clone());
                Err(Error::invalid(reason.clone()))
            }
        }
    }

    pub(crate) fn counters(&self) -> CacheCounters {
        CacheCounters {
            compilations: self.compilations.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            cached: self.lock().plans.len() as u64,
        }
    }
}
