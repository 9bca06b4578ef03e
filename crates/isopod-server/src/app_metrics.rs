//! Per-app request counters for `/metrics`: requests by status class,
//! time to first byte, CPU, cold starts and outbound fetches.
//!
//! Each app's counters are plain atomics that requests add to on whichever
//! thread serves them; `/metrics` reads them at each scrape. They are kept
//! by app name, not by deployment, so a redeploy does not reset them.
//!
//! Invariant: the number of label values is bounded. The first
//! `max_apps` apps get counters of their own; every later app shares the
//! ones labelled `other` (`AppMetricsSet::OTHER`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;

/// Upper bounds, in seconds, of the latency histograms' buckets.
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`LATENCY_BUCKETS`] in nanoseconds: a request compares integers.
const LATENCY_BUCKETS_NS: [u64; LATENCY_BUCKETS.len()] = {
    let mut nanos = [0u64; LATENCY_BUCKETS.len()];
    let mut i = 0;
    while i < nanos.len() {
        nanos[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

/// A histogram as read: sum in seconds, count, and per-bucket (not
/// cumulative) counts with their upper bounds, `+Inf` last.
pub(crate) type HistogramReading = (f64, u64, Vec<(f64, u64)>);

/// A histogram of durations whose buckets are atomics.
#[derive(Debug, Default)]
pub(crate) struct DurationHistogram {
    /// One count per bucket of [`LATENCY_BUCKETS`], then one for `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl DurationHistogram {
    pub(crate) fn observe(&self, duration: Duration) {
        let nanos = duration.as_nanos() as u64;
        let bucket = LATENCY_BUCKETS_NS
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> HistogramReading {
        let buckets = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        (
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            self.count.load(Ordering::Relaxed),
            buckets,
        )
    }
}

/// One app's counters (or the shared `other` ones).
#[derive(Debug, Default)]
pub(crate) struct AppMetrics {
    /// Responses by status class: 1xx to 5xx.
    pub(crate) responses: [AtomicU64; 5],
    /// From a request's receipt to its response's head.
    pub(crate) first_byte: DurationHistogram,
    /// The same, for requests that waited for their instance to be made or
    /// loaded: a cold start as the client sees it.
    pub(crate) cold_first_byte: DurationHistogram,
    /// CPU charged to requests until their responses, in microseconds.
    pub(crate) cpu_us: AtomicU64,
    /// Outbound fetches by outcome (`isopod_runtime::FetchOutcome` order).
    pub(crate) fetches: Arc<isopod_runtime::FetchCounts>,
}

impl AppMetrics {
    /// Counts one response.
    pub(crate) fn record(
        &self,
        status: StatusCode,
        first_byte: Duration,
        cpu: Option<Duration>,
        cold: bool,
    ) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        self.first_byte.observe(first_byte);
        if cold {
            self.cold_first_byte.observe(first_byte);
        }
        if let Some(cpu) = cpu {
            self.cpu_us
                .fetch_add(cpu.as_micros() as u64, Ordering::Relaxed);
        }
    }
}

/// Every app's counters, by name, up to a bound.
#[derive(Debug)]
pub(crate) struct AppMetricsSet {
    max_apps: usize,
    apps: Mutex<HashMap<Arc<str>, Arc<AppMetrics>>>,
    other: Arc<AppMetrics>,
}

impl AppMetricsSet {
    /// The label the apps past the bound share.
    pub(crate) const OTHER: &'static str = "other";

    pub(crate) fn new(max_apps: usize) -> AppMetricsSet {
        AppMetricsSet {
            max_apps,
            apps: Mutex::new(HashMap::new()),
            other: Arc::default(),
        }
    }

    /// The counters of `app`: its own, or the shared ones once `max_apps`
    /// apps have theirs. Called at deploy, not per request.
    pub(crate) fn for_app(&self, app: &Arc<str>) -> Arc<AppMetrics> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(metrics) = apps.get(app) {
            return metrics.clone();
        }
        if apps.len() >= self.max_apps {
            return self.other.clone();
        }
        let metrics = Arc::new(AppMetrics::default());
        apps.insert(app.clone(), metrics.clone());
        metrics
    }

    /// Every label and its counters, by name, `other` last.
    pub(crate) fn all(&self) -> Vec<(String, Arc<AppMetrics>)> {
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = apps
            .iter()
            .map(|(name, metrics)| (name.to_string(), metrics.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.push((Self::OTHER.to_string(), self.other.clone()));
        all
    }

    /// The label `app`'s numbers appear under.
    pub(crate) fn label_of(&self, app: &str) -> String {
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if apps.contains_key(app) {
            app.to_string()
        } else {
            Self::OTHER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_past_the_bound_share_other() {
        let set = AppMetricsSet::new(2);
        let a = set.for_app(&Arc::from("a"));
        let b = set.for_app(&Arc::from("b"));
        let c = set.for_app(&Arc::from("c"));
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&c, &set.for_app(&Arc::from("d"))));
        assert!(Arc::ptr_eq(&a, &set.for_app(&Arc::from("a"))));
        assert_eq!(set.label_of("c"), "other");
        let labels: Vec<_> = set.all().into_iter().map(|(name, _)| name).collect();
        assert_eq!(labels, ["a", "b", "other"]);
    }

    #[test]
    fn a_histogram_counts_into_its_bucket() {
        let histogram = DurationHistogram::default();
        histogram.observe(Duration::from_micros(700));
        histogram.observe(Duration::from_secs(60));
        let (sum, count, buckets) = histogram.read();
        assert_eq!(count, 2);
        assert!((sum - 60.0007).abs() < 1e-6);
        assert_eq!(buckets[1], (0.001, 1));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
    }
}
