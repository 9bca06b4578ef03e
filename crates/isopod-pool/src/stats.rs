//! Pool-wide counters, shared by every worker thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isopod_runtime::{KillEvent, Releasing};

/// How many kill events are kept per app.
const RECENT_KILLS: usize = 10;

/// How many cold-start durations are kept for the percentiles.
const COLD_START_WINDOW: usize = 1024;

/// State every thread updates: the live-instance count against the cap, and
/// the hit/miss/eviction counters.
pub(crate) struct Shared {
    max_instances: usize,
    total: AtomicUsize,
    /// What every thread's graveyard still holds: stopped instances not
    /// yet dropped.
    pub(crate) releasing: Arc<Releasing>,
    /// Stopped instances dropped so far.
    teardowns: AtomicU64,
    /// Bytes reserved by misses making their instances now (what such an
    /// instance typically holds), counted toward the memory budget until
    /// the instance is made and its memory is resident.
    pub(crate) creating: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    spares: AtomicUsize,
    blanks_created: AtomicU64,
    /// Misses as the request saw them (a spare or a new isolate, plus the
    /// bundle's evaluation).
    cold_starts: Mutex<Durations>,
    /// Blank isolates made from the snapshot, spares or inline.
    blank_creations: Mutex<Durations>,
    snapshot_starts: AtomicU64,
    snapshot_start_failures: AtomicU64,
    /// Instances created from their version's snapshot.
    snapshot_start_times: Mutex<Durations>,
    /// Misses from the request's arrival to its response head, and parts.
    first_responses: Mutex<FirstResponses>,
    /// Kills per app.
    kills: Mutex<HashMap<String, AppKills>>,
}

/// The kills of one app's instances.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AppKills {
    /// Kills per reason (`cpu`, `memory`, …) since the process started.
    pub by_reason: BTreeMap<&'static str, u64>,
    /// The most recent kill events, newest last.
    pub recent: VecDeque<KillEvent>,
}

/// Misses as their client sees them: from the request's arrival to its
/// response head, and the parts of that.
#[derive(Default)]
struct FirstResponses {
    total: Durations,
    waiting: Durations,
    isolate: Durations,
    load: Durations,
    handler: Durations,
}

/// The most recent `COLD_START_WINDOW` durations of one kind.
#[derive(Default)]
struct Durations {
    recent: Vec<Duration>,
    next: usize,
}

impl Durations {
    fn record(&mut self, took: Duration) {
        if self.recent.len() < COLD_START_WINDOW {
            self.recent.push(took);
        } else {
            self.recent[self.next] = took;
        }
        self.next = (self.next + 1) % COLD_START_WINDOW;
    }

    /// (p50, p99) in milliseconds.
    fn percentiles(&self) -> (Option<f64>, Option<f64>) {
        let mut sorted = self.recent.clone();
        sorted.sort();
        let at = |p: f64| {
            (!sorted.is_empty()).then(|| {
                let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
                sorted[i].as_secs_f64() * 1000.0
            })
        };
        (at(0.50), at(0.99))
    }
}

impl Shared {
    pub(crate) fn new(max_instances: usize) -> Shared {
        Shared {
            max_instances,
            total: AtomicUsize::new(0),
            releasing: Arc::new(Releasing::default()),
            teardowns: AtomicU64::new(0),
            creating: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            spares: AtomicUsize::new(0),
            blanks_created: AtomicU64::new(0),
            cold_starts: Mutex::new(Durations::default()),
            blank_creations: Mutex::new(Durations::default()),
            snapshot_starts: AtomicU64::new(0),
            snapshot_start_failures: AtomicU64::new(0),
            snapshot_start_times: Mutex::new(Durations::default()),
            first_responses: Mutex::new(FirstResponses::default()),
            kills: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn record_kill(&self, event: &KillEvent) {
        let mut kills = self.kills.lock().unwrap_or_else(|e| e.into_inner());
        let app = kills.entry(event.app.clone()).or_default();
        *app.by_reason.entry(event.reason.as_str()).or_default() += 1;
        if app.recent.len() == RECENT_KILLS {
            app.recent.pop_front();
        }
        app.recent.push_back(event.clone());
    }

    pub(crate) fn kills(&self, app: &str) -> AppKills {
        self.kills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .cloned()
            .unwrap_or_default()
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

    pub(crate) fn record_teardowns(&self, count: usize) {
        self.teardowns.fetch_add(count as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_cold_start(&self, took: Duration) {
        self.cold_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(took);
    }

    pub(crate) fn record_blank_creation(&self, took: Duration) {
        self.blanks_created.fetch_add(1, Ordering::Relaxed);
        self.blank_creations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(took);
    }

    /// A request that found no warm instance got its response head: it
    /// arrived at `arrived`, the pool took it at `looking`, its instance was
    /// ready at `ready` (made as `start` says), and the handler answered
    /// now.
    pub(crate) fn record_first_response(
        &self,
        arrived: std::time::Instant,
        looking: std::time::Instant,
        ready: std::time::Instant,
        start: crate::local::StartTimes,
    ) {
        let now = std::time::Instant::now();
        let mut first = self
            .first_responses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        first.total.record(now.saturating_duration_since(arrived));
        first
            .waiting
            .record(looking.saturating_duration_since(arrived));
        first.isolate.record(start.isolate);
        first.load.record(start.load);
        first.handler.record(now.saturating_duration_since(ready));
    }

    /// An instance was created from its version's snapshot (`ok`), or
    /// creating it failed.
    pub(crate) fn record_snapshot_start(&self, took: Duration, ok: bool) {
        if !ok {
            self.snapshot_start_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.snapshot_starts.fetch_add(1, Ordering::Relaxed);
        self.snapshot_start_times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(took);
    }

    /// A spare was added (`+1`) or taken or dropped (`-1`).
    pub(crate) fn spares_changed(&self, added: bool) {
        if added {
            self.spares.fetch_add(1, Ordering::Relaxed);
        } else {
            self.spares.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The statistics, with `instances` from every one of the pool's
    /// `threads` (the last of which is the quarantine thread).
    pub(crate) fn snapshot(&self, threads: usize, instances: Vec<InstanceRow>) -> PoolStats {
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let max_instances = self.max_instances;
        let cached = self.total.load(Ordering::Acquire);
        let (cold_p50, cold_p99) = self
            .cold_starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .percentiles();
        let (blank_p50, blank_p99) = self
            .blank_creations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .percentiles();
        let (snapshot_p50, snapshot_p99) = self
            .snapshot_start_times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .percentiles();
        let first = {
            let first = self
                .first_responses
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            [
                first.total.percentiles(),
                first.waiting.percentiles(),
                first.isolate.percentiles(),
                first.load.percentiles(),
                first.handler.percentiles(),
            ]
        };
        let code_cache = isopod_runtime::code_cache_counts();
        let mut per_thread = vec![0; threads];
        for row in &instances {
            if let Some(count) = per_thread.get_mut(row.thread) {
                *count += 1;
            }
        }
        PoolStats {
            max_instances,
            cached,
            free: max_instances.saturating_sub(cached),
            tearing_down: self.releasing.instances(),
            releasing_bytes: self.releasing.bytes(),
            teardowns: self.teardowns.load(Ordering::Relaxed),
            hits,
            misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            evictions: self.evictions.load(Ordering::Relaxed),
            spares: self.spares.load(Ordering::Relaxed),
            blank_creations: self.blanks_created.load(Ordering::Relaxed),
            cold_start_p50_ms: cold_p50,
            cold_start_p99_ms: cold_p99,
            blank_creation_p50_ms: blank_p50,
            blank_creation_p99_ms: blank_p99,
            snapshot_starts: self.snapshot_starts.load(Ordering::Relaxed),
            snapshot_start_failures: self.snapshot_start_failures.load(Ordering::Relaxed),
            snapshot_start_p50_ms: snapshot_p50,
            snapshot_start_p99_ms: snapshot_p99,
            first_response_p50_ms: first[0].0,
            first_response_p99_ms: first[0].1,
            first_response_wait_p50_ms: first[1].0,
            first_response_isolate_p50_ms: first[2].0,
            first_response_load_p50_ms: first[3].0,
            first_response_handler_p50_ms: first[4].0,
            instances_per_thread: per_thread,
            quarantine_thread: threads.saturating_sub(1),
            code_cache_offers: code_cache.offers,
            code_cache_rejections: code_cache.rejections,
            code_caches_made_after_execution: code_cache.made_after_execution,
            cpu_clock_reads: isopod_runtime::cpu_clock_reads(),
            cpu_clock_read_ns: isopod_runtime::cpu_clock_read_cost().as_nanos() as u64,
            instances,
        }
    }
}

/// A snapshot of the pool, as `GET /admin/pool` answers it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStats {
    /// The cap on live instances.
    pub max_instances: usize,
    /// Live instances, spares included.
    pub cached: usize,
    /// Room under the cap: `max_instances - cached`.
    pub free: usize,
    /// Stopped instances whose isolates are not dropped yet (they left the
    /// cap; their memory is on its way back).
    pub tearing_down: usize,
    /// What those still hold, as estimated when they stopped (bytes).
    pub releasing_bytes: u64,
    /// Stopped instances dropped so far.
    pub teardowns: u64,
    /// Requests that found a warm instance.
    pub hits: u64,
    /// Requests that needed a new instance.
    pub misses: u64,
    /// `hits / (hits + misses)`.
    pub hit_rate: f64,
    /// Idle instances dropped to make room.
    pub evictions: u64,
    /// Blank instances (snapshot loaded, no bundle) ready for misses.
    pub spares: usize,
    /// Blank isolates created from the snapshot so far (spares and misses
    /// that found no spare).
    pub blank_creations: u64,
    /// Cold start as the client sees it: the median time from a request's
    /// arrival (its head read) to its response head, over the recent
    /// requests that found no warm instance.
    pub first_response_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub first_response_p99_ms: Option<f64>,
    /// Of that, the median wait from arrival until the pool took the
    /// request (the hop to the app's home thread included).
    pub first_response_wait_p50_ms: Option<f64>,
    /// Of that, the median time to get the isolate: a spare, a new blank
    /// one, or the version's snapshot restored.
    pub first_response_isolate_p50_ms: Option<f64>,
    /// Of that, the median time loading the bundle into it (compile and
    /// top-level run; zero from a snapshot).
    pub first_response_load_p50_ms: Option<f64>,
    /// Of that, the median time from the instance being ready to the
    /// handler's response head.
    pub first_response_handler_p50_ms: Option<f64>,
    /// An internal figure: the median time a miss took to get its instance
    /// ready (a spare, a new isolate or a snapshot restored, plus loading
    /// the bundle), over the recent ones (deploys' warm-ups included);
    /// `first_response_*` is what the client waited.
    pub cold_start_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub cold_start_p99_ms: Option<f64>,
    /// Median time to create a blank isolate from the snapshot.
    pub blank_creation_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub blank_creation_p99_ms: Option<f64>,
    /// Instances created from their version's snapshot (no compile, no
    /// top-level run) so far.
    pub snapshot_starts: u64,
    /// Creations from a version's snapshot that failed (the miss failed).
    pub snapshot_start_failures: u64,
    /// Median time to create an instance from its version's snapshot,
    /// ready to serve, over the recent ones.
    pub snapshot_start_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub snapshot_start_p99_ms: Option<f64>,
    /// Pooled instances per thread (the worker threads, then the
    /// quarantine thread).
    pub instances_per_thread: Vec<usize>,
    /// The index of the quarantine thread, where apps recently killed by a
    /// limit are served.
    pub quarantine_thread: usize,
    /// Loads from source that were offered their version's code cache.
    pub code_cache_offers: u64,
    /// Of those, the offers V8 rejected (it compiled from source instead).
    pub code_cache_rejections: u64,
    /// Versions' code caches made after an instance's first request ran
    /// (so they hold the functions execution compiled).
    pub code_caches_made_after_execution: u64,
    /// Thread CPU-clock reads the limit enforcer has made so far; divided
    /// by the requests served in the same interval, the reads per request.
    pub cpu_clock_reads: u64,
    /// What one such read costs on this machine (measured once).
    pub cpu_clock_read_ns: u64,
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
    /// Off its app's home thread (started because the app was busy).
    pub replica: bool,
    /// Milliseconds since it was created.
    pub age_ms: u64,
    /// Requests dispatched to it.
    pub requests_served: u64,
    /// Requests not yet complete.
    pub in_flight: usize,
    /// Bytes of V8 heap in use, as last sampled.
    pub heap_used_bytes: usize,
}
