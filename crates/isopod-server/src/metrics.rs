//! The admin API's `GET /metrics`, in the Prometheus text format: each
//! app's request counters (`app_metrics.rs`), and the pool's statistics and
//! each app's kills, read afresh at every scrape.
//!
//! Invariant: every `app` label is one `AppMetricsSet::label_of` gives, so
//! the number of series stays bounded however many apps are deployed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use isopod_pool::{AppKills, PoolStats};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::app_metrics::{AppMetrics, DurationHistogram, HistogramReading};

/// A gauge set to `value`.
fn gauge(value: i64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

/// A counter at `value` (the pool's own counters are monotonic since the
/// process started).
fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

/// Gauges in seconds, from milliseconds.
fn seconds(ms: Option<f64>) -> Gauge<f64, std::sync::atomic::AtomicU64> {
    let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    gauge.set(ms.unwrap_or(0.0) / 1000.0);
    gauge
}

/// What one scrape reads.
pub(crate) struct Scrape<'a> {
    pub(crate) stats: &'a PoolStats,
    /// Each deployed app's kills, under its label.
    pub(crate) kills: &'a [(String, AppKills)],
    /// Each label's request counters.
    pub(crate) apps: &'a [(String, Arc<AppMetrics>)],
    /// The process's memory budget, in bytes.
    pub(crate) memory_budget: u64,
    /// The label of an app by name.
    pub(crate) label_of: &'a dyn Fn(&str) -> String,
}

type Labels = Vec<(String, String)>;

/// A histogram read from an [`AppMetrics`] at scrape time (prometheus-client's
/// own histogram cannot be set from counts kept elsewhere).
#[derive(Debug, Default)]
struct ReadHistogram(std::sync::Mutex<HistogramReading>);

impl ReadHistogram {
    fn set(&self, histogram: &DurationHistogram) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = histogram.read();
    }
}

impl TypedMetric for ReadHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ReadHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = &*self.0.lock().unwrap_or_else(|e| e.into_inner());
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            *sum, *count, buckets, None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Registers, under `name`, one histogram per app label.
fn histograms(
    registry: &mut Registry,
    name: &str,
    help: &str,
    apps: &[(String, Arc<AppMetrics>)],
    pick: impl Fn(&AppMetrics) -> &DurationHistogram,
) {
    let family = Family::<Labels, ReadHistogram>::default();
    for (app, metrics) in apps {
        let labels = vec![("app".to_string(), app.clone())];
        family.get_or_create(&labels).set(pick(metrics));
    }
    registry.register(name, help, family);
}

/// The metrics text for one scrape.
pub(crate) fn render(scrape: &Scrape<'_>) -> String {
    let stats = scrape.stats;
    let mut registry = Registry::with_prefix("isopod");
    let responses = Family::<Labels, Counter>::default();
    let cpu = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    let fetches = Family::<Labels, Counter>::default();
    for (app, metrics) in scrape.apps {
        for (class, count) in metrics.responses.iter().enumerate() {
            responses
                .get_or_create(&vec![
                    ("app".to_string(), app.clone()),
                    ("status".to_string(), format!("{}xx", class + 1)),
                ])
                .inc_by(count.load(Ordering::Relaxed));
        }
        cpu.get_or_create(&vec![("app".to_string(), app.clone())])
            .inc_by(metrics.cpu_us.load(Ordering::Relaxed) as f64 / 1e6);
        let counts = &metrics.fetches;
        for (outcome, count) in [
            ("response", &counts.responses),
            ("failed", &counts.failed),
            ("refused", &counts.refused),
        ] {
            fetches
                .get_or_create(&vec![
                    ("app".to_string(), app.clone()),
                    ("outcome".to_string(), outcome.to_string()),
                ])
                .inc_by(count.load(Ordering::Relaxed));
        }
    }
    registry.register(
        "app_requests",
        "Requests answered, by app and status class (isopod's own answers for the app included)",
        responses,
    );
    histograms(
        &mut registry,
        "app_first_byte_seconds",
        "From a request's arrival to its response's head, by app",
        scrape.apps,
        |m| &m.first_byte,
    );
    histograms(
        &mut registry,
        "app_cold_start_seconds",
        "From arrival to response head for requests that waited for a new instance (a cold start as the client sees it), by app",
        scrape.apps,
        |m| &m.cold_first_byte,
    );
    registry.register(
        "app_cpu_seconds",
        "CPU charged to the app's requests until their responses",
        cpu,
    );
    registry.register(
        "app_fetches",
        "Outbound fetches by app and outcome",
        fetches,
    );
    registry.register(
        "process_resident_bytes",
        "The process's resident memory",
        gauge(isopod_pool::resident_bytes().unwrap_or(0) as i64),
    );
    registry.register(
        "process_memory_budget_bytes",
        "The memory budget the pool evicts to stay under",
        gauge(scrape.memory_budget as i64),
    );
    let per_thread = Family::<Labels, Gauge>::default();
    for (thread, count) in stats.instances_per_thread.iter().enumerate() {
        per_thread
            .get_or_create(&vec![("thread".to_string(), thread.to_string())])
            .set(*count as i64);
    }
    registry.register(
        "pool_thread_instances",
        "Live instances on each worker thread",
        per_thread,
    );
    registry.register(
        "pool_max_instances",
        "The cap on live instances",
        gauge(stats.max_instances as i64),
    );
    registry.register(
        "pool_instances",
        "Live instances, spares included",
        gauge(stats.cached as i64),
    );
    registry.register(
        "pool_spares",
        "Blank instances ready for misses",
        gauge(stats.spares as i64),
    );
    registry.register(
        "pool_tearing_down",
        "Stopped instances not yet dropped",
        gauge(stats.tearing_down as i64),
    );
    registry.register(
        "pool_releasing_bytes",
        "Memory stopped instances still hold (estimated)",
        gauge(stats.releasing_bytes as i64),
    );
    registry.register(
        "pool_hits",
        "Requests that found a warm instance",
        counter(stats.hits),
    );
    registry.register(
        "pool_misses",
        "Requests that needed a new instance",
        counter(stats.misses),
    );
    registry.register(
        "pool_evictions",
        "Idle instances dropped to make room",
        counter(stats.evictions),
    );
    registry.register(
        "pool_teardowns",
        "Stopped instances dropped",
        counter(stats.teardowns),
    );
    registry.register(
        "pool_blank_creations",
        "Blank isolates made from the snapshot",
        counter(stats.blank_creations),
    );
    registry.register(
        "cold_start_p50_seconds",
        "Median time a miss took to get its instance, over recent misses",
        seconds(stats.cold_start_p50_ms),
    );
    registry.register(
        "cold_start_p99_seconds",
        "99th percentile of the same",
        seconds(stats.cold_start_p99_ms),
    );
    let instances = Family::<Vec<(String, String)>, Gauge>::default();
    let in_flight = Family::<Vec<(String, String)>, Gauge>::default();
    let heap = Family::<Vec<(String, String)>, Gauge>::default();
    for row in &stats.instances {
        let app = vec![("app".to_string(), (scrape.label_of)(&row.app))];
        instances.get_or_create(&app).inc();
        in_flight.get_or_create(&app).inc_by(row.in_flight as i64);
        heap.get_or_create(&app).inc_by(row.heap_used_bytes as i64);
    }
    registry.register(
        "app_instances",
        "Live pooled instances of the app",
        instances,
    );
    registry.register(
        "app_in_flight",
        "Requests in flight on the app's instances",
        in_flight,
    );
    registry.register(
        "app_heap_used_bytes",
        "V8 heap in use by the app's instances, as last sampled",
        heap,
    );
    let killed = Family::<Vec<(String, String)>, Counter>::default();
    for (app, kills) in scrape.kills {
        for (reason, count) in &kills.by_reason {
            killed
                .get_or_create(&vec![
                    ("app".to_string(), app.clone()),
                    ("reason".to_string(), (*reason).to_string()),
                ])
                .inc_by(*count);
        }
    }
    registry.register(
        "app_kills",
        "Instances of the app cut off by a limit, by reason",
        killed,
    );
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}
