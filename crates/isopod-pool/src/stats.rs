//! Pool-wide counters, shared by every worker thread.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How many cold-start durations are kept for the percentiles.
const COLD_START_WINDOW: usize = 1024;

/// State every thread updates: the live-instance count against the cap, and
/// the hit/miss/eviction counters.
pub(crate) struct Shared {
    max_instances: usize,
    total: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    cold_starts: Mutex<ColdStarts>,
}

#[derive(Default)]
struct ColdStarts {
    recent: Vec<Duration>,
    next: usize,
}

impl Shared {
    pub(crate) fn new(max_instances: usize) -> Shared {
        Shared {
            max_instances,
            total: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            cold_starts: Mutex::new(ColdStarts::default()),
        }
    }

    /// Counts one more live instance, unless the cap is reached.
    pub(crate) fn try_reserve(&self) -> bool {
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_instances).then_some(n + 1)
            })
            .is_ok()
    }

    /// One live instance fewer (it stopped, or was never made).
    pub(crate) fn release(&self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn record_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_eviction(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_cold_start(&self, took: Duration) {
        let mut cold = self.cold_starts.lock().unwrap_or_else(|e| e.into_inner());
        if cold.recent.len() < COLD_START_WINDOW {
            cold.recent.push(took);
        } else {
            let at = cold.next;
            cold.recent[at] = took;
        }
        cold.next = (cold.next + 1) % COLD_START_WINDOW;
    }

    pub(crate) fn snapshot(&self, instances: Vec<InstanceRow>) -> PoolStats {
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let total = self.max_instances;
        let cached = self.total.load(Ordering::Acquire);
        let mut cold = self
            .cold_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recent
            .clone();
        cold.sort();
        let percentile = |p: f64| {
            (!cold.is_empty()).then(|| {
                let at = ((cold.len() as f64 * p).ceil() as usize).clamp(1, cold.len()) - 1;
                cold[at].as_secs_f64() * 1000.0
            })
        };
        PoolStats {
            total,
            cached,
            capacity: total.saturating_sub(cached),
            hits,
            misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            evictions: self.evictions.load(Ordering::Relaxed),
            cold_start_p50_ms: percentile(0.50),
            cold_start_p99_ms: percentile(0.99),
            instances,
        }
    }
}

/// A snapshot of the pool, as `GET /admin/pool` answers it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStats {
    /// The cap on live instances (`max_instances`).
    pub total: usize,
    /// Live instances.
    pub cached: usize,
    /// `total - cached`.
    pub capacity: usize,
    /// Requests that found a warm instance.
    pub hits: u64,
    /// Requests that needed a new instance.
    pub misses: u64,
    /// `hits / (hits + misses)`.
    pub hit_rate: f64,
    /// Idle instances dropped to make room.
    pub evictions: u64,
    /// Median time to create an instance (isolate and bundle), over the
    /// recent misses.
    pub cold_start_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub cold_start_p99_ms: Option<f64>,
    /// One row per live pooled instance.
    pub instances: Vec<InstanceRow>,
}

/// One live instance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceRow {
    /// The app's name.
    pub app: String,
    /// `hash-deploy`.
    pub version: String,
    /// The worker thread it lives on.
    pub thread: usize,
    /// Milliseconds since it was created.
    pub age_ms: u64,
    /// Requests dispatched to it.
    pub requests_served: u64,
    /// Requests not yet complete.
    pub in_flight: usize,
}
