//! What one app may consume, and what happens when it goes past.
//!
//! [`Limits`] is the one description of an app's budgets: the process has
//! defaults (config file, then environment), an app's manifest overrides any
//! of them ([`LimitOverrides`]), and they reach the instance in its
//! [`crate::AppConfig`]. Every limit of the isolate is decided in one
//! place, the instance's limit enforcer (`enforcer.rs`): CPU, memory,
//! `waitUntil` time, and the values it hands to the mechanisms that count
//! on their own (the watchdog, the heap's create parameters and the
//! ArrayBuffer allocator, a streamed body's pump, the bootstrap's `fetch`).
//! The limits of the HTTP exchange (the response timeout, the body size,
//! an app's concurrency) are the HTTP layer's.
//!
//! Units are those of the manifest (milliseconds, MiB, counts), so a
//! `Limits` serialises to what an operator wrote.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An app's budgets. `Default` gives the documented process defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// CPU time one request may use inside the isolate, in ms (default 50).
    pub cpu_ms: u64,
    /// CPU time the bundle's top-level code may use, in ms (default 400).
    pub startup_cpu_ms: u64,
    /// The isolate's initial heap, in MiB (default 10).
    pub heap_initial_mb: u64,
    /// The isolate's maximum heap, in MiB (default 128). ArrayBuffer memory
    /// counts against the same budget.
    pub heap_max_mb: u64,
    /// Outbound `fetch` calls per request (default 50).
    pub subrequests: u32,
    /// Wall-clock time from receipt to response headers, in ms (default
    /// 30 s); past it the client gets 504.
    pub response_timeout_ms: u64,
    /// How long a streaming response may send nothing, in ms (default 60 s).
    pub stream_idle_timeout_ms: u64,
    /// Wall-clock time `waitUntil` work may run after the response, in ms
    /// (default 30 s).
    pub wait_until_timeout_ms: u64,
    /// The largest request body, in MiB (default 100).
    pub max_request_body_mb: u64,
    /// Requests of this app being served at once across the process
    /// (default 1000); more wait in a queue of the same length, then get 503.
    pub max_concurrent_requests: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            cpu_ms: 50,
            startup_cpu_ms: 400,
            heap_initial_mb: 10,
            heap_max_mb: 128,
            subrequests: 50,
            response_timeout_ms: 30_000,
            stream_idle_timeout_ms: 60_000,
            wait_until_timeout_ms: 30_000,
            max_request_body_mb: 100,
            max_concurrent_requests: 1000,
        }
    }
}

const MIB: u64 = 1024 * 1024;

impl Limits {
    /// CPU per request.
    pub fn cpu(&self) -> Duration {
        Duration::from_millis(self.cpu_ms)
    }

    /// CPU for top-level code.
    pub fn startup_cpu(&self) -> Duration {
        Duration::from_millis(self.startup_cpu_ms)
    }

    /// Initial heap in bytes.
    pub fn heap_initial_bytes(&self) -> usize {
        usize::try_from(self.heap_initial_mb.saturating_mul(MIB)).unwrap_or(usize::MAX)
    }

    /// Maximum heap (and ArrayBuffer budget) in bytes.
    pub fn heap_max_bytes(&self) -> usize {
        usize::try_from(self.heap_max_mb.saturating_mul(MIB)).unwrap_or(usize::MAX)
    }

    /// Time to response headers.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    /// Silence allowed on a streaming response.
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.stream_idle_timeout_ms)
    }

    /// Time allowed for `waitUntil` work after the response.
    pub fn wait_until_timeout(&self) -> Duration {
        Duration::from_millis(self.wait_until_timeout_ms)
    }

    /// The largest request body in bytes.
    pub fn max_request_body_bytes(&self) -> u64 {
        self.max_request_body_mb.saturating_mul(MIB)
    }

    /// Whether an isolate made for `self` can serve an app with `other`:
    /// heap sizes are fixed when an isolate is created.
    pub fn same_isolate_shape(&self, other: &Limits) -> bool {
        self.heap_initial_mb == other.heap_initial_mb && self.heap_max_mb == other.heap_max_mb
    }

    /// Refuses budgets that cannot work: zero CPU, a heap too small to hold
    /// the API surface, an initial heap above the maximum.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.cpu_ms == 0 || self.startup_cpu_ms == 0 {
            return Err(LimitsError(
                "cpu_ms and startup_cpu_ms must be above 0".into(),
            ));
        }
        if self.heap_max_mb < 8 {
            return Err(LimitsError("heap_max_mb must be at least 8".into()));
        }
        if self.heap_initial_mb > self.heap_max_mb {
            return Err(LimitsError(
                "heap_initial_mb must not exceed heap_max_mb".into(),
            ));
        }
        if self.max_concurrent_requests == 0 {
            return Err(LimitsError(
                "max_concurrent_requests must be above 0".into(),
            ));
        }
        Ok(())
    }
}

/// A [`Limits`] value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid limits: {0}")]
pub struct LimitsError(String);

/// The limits an app's manifest sets; the rest come from the process
/// defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // each field overrides the `Limits` field of its name
pub struct LimitOverrides {
    pub cpu_ms: Option<u64>,
    pub startup_cpu_ms: Option<u64>,
    pub heap_initial_mb: Option<u64>,
    pub heap_max_mb: Option<u64>,
    pub subrequests: Option<u32>,
    pub response_timeout_ms: Option<u64>,
    pub stream_idle_timeout_ms: Option<u64>,
    pub wait_until_timeout_ms: Option<u64>,
    pub max_request_body_mb: Option<u64>,
    pub max_concurrent_requests: Option<usize>,
}

impl LimitOverrides {
    /// `defaults` with these overrides applied, checked.
    pub fn over(&self, defaults: &Limits) -> Result<Limits, LimitsError> {
        let limits = Limits {
            cpu_ms: self.cpu_ms.unwrap_or(defaults.cpu_ms),
            startup_cpu_ms: self.startup_cpu_ms.unwrap_or(defaults.startup_cpu_ms),
            heap_initial_mb: self.heap_initial_mb.unwrap_or(defaults.heap_initial_mb),
            heap_max_mb: self.heap_max_mb.unwrap_or(defaults.heap_max_mb),
            subrequests: self.subrequests.unwrap_or(defaults.subrequests),
            response_timeout_ms: self
                .response_timeout_ms
                .unwrap_or(defaults.response_timeout_ms),
            stream_idle_timeout_ms: self
                .stream_idle_timeout_ms
                .unwrap_or(defaults.stream_idle_timeout_ms),
            wait_until_timeout_ms: self
                .wait_until_timeout_ms
                .unwrap_or(defaults.wait_until_timeout_ms),
            max_request_body_mb: self
                .max_request_body_mb
                .unwrap_or(defaults.max_request_body_mb),
            max_concurrent_requests: self
                .max_concurrent_requests
                .unwrap_or(defaults.max_concurrent_requests),
        };
        limits.validate()?;
        Ok(limits)
    }
}

/// Why an instance was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum KillReason {
    /// A request used more CPU than `cpu_ms`.
    Cpu = 0,
    /// Top-level code used more CPU than `startup_cpu_ms`.
    StartupCpu = 1,
    /// JavaScript kept running with no request in flight (timers left
    /// behind) past `cpu_ms`.
    BackgroundCpu = 2,
    /// The heap (with ArrayBuffer memory) reached `heap_max_mb`.
    Memory = 3,
}

impl KillReason {
    /// The inverse of `reason as u8`, for the watchdog's atomics.
    pub(crate) fn from_u8(value: u8) -> KillReason {
        match value {
            1 => KillReason::StartupCpu,
            2 => KillReason::BackgroundCpu,
            3 => KillReason::Memory,
            _ => KillReason::Cpu,
        }
    }

    /// A short phrase for logs and 503 bodies.
    pub fn describe(self) -> &'static str {
        match self {
            KillReason::Cpu => "the request exceeded its CPU time limit",
            KillReason::StartupCpu => "the bundle's top-level code exceeded its startup CPU budget",
            KillReason::BackgroundCpu => {
                "work left running after every request finished exceeded the CPU time limit"
            }
            KillReason::Memory => "the isolate exceeded its memory limit",
        }
    }

    /// The snake_case name used in metrics and kill events.
    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::Cpu => "cpu",
            KillReason::StartupCpu => "startup_cpu",
            KillReason::BackgroundCpu => "background_cpu",
            KillReason::Memory => "memory",
        }
    }
}

/// Everything known about one kill: the diagnosable event the issue asks
/// for, logged by the instance and counted per app by the pool.
#[derive(Debug, Clone, Serialize)]
pub struct KillEvent {
    /// The app.
    pub app: String,
    /// The app's version (content hash and deploy), when the pool named it.
    pub version: String,
    /// Why.
    pub reason: KillReason,
    /// Method of the request that went past its budget (empty for
    /// start-up and background kills).
    pub method: String,
    /// Path of that request.
    pub path: String,
    /// Its `X-Request-Id` (empty with no offending request).
    pub request_id: String,
    /// CPU the offending request (or start-up, or background work) had
    /// used, in ms.
    pub cpu_ms: f64,
    /// CPU the instance's crypto thread had spent in all, in ms: part of
    /// what was charged to its requests, spent off the isolate's thread.
    pub crypto_cpu_ms: f64,
    /// The highest V8 heap use seen on the instance, in bytes.
    pub heap_high_water_bytes: usize,
    /// The JavaScript stack when the watchdog interrupted it, innermost
    /// first, if one was captured.
    pub stack: Option<String>,
    /// Other requests answered 503 because the isolate went with it.
    pub collateral_requests: usize,
}
