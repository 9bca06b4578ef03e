//! The admin API's `GET /metrics`: the pool's statistics and each app's
//! kills in the Prometheus text format, read afresh at every scrape (no
//! counter is kept on the request path for it).

use isopod_pool::{AppKills, PoolStats};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

/// The metrics text for `stats` and the kills of each deployed app.
pub(crate) fn render(stats: &PoolStats, kills: &[(String, AppKills)]) -> String {
    let mut registry = Registry::with_prefix("isopod");
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
        let app = vec![("app".to_string(), row.app.clone())];
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
    for (app, kills) in kills {
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
