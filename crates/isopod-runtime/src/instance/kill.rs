//! Kills: how a limit's termination becomes the end of an instance.
//!
//! A limit (CPU, startup or background CPU, memory) terminates the isolate
//! from the watchdog or the heap-limit callback and leaves its
//! `Termination` in the watch slot. Whoever runs V8 next on this thread (the
//! load, the driver) finds it there and calls `kill`: the request that broke
//! the limit and every other one in flight are answered `Killed`, and the
//! event is logged (`isopod::kill`) and handed to the [`KillSink`].
//!
//! Invariants: a killed instance is discarded, never reused; its event
//! names the version set with [`Instance::set_version`] and, for CPU and
//! memory kills, the most-charged request in flight as the cause.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::Instance;
use crate::limits::{KillEvent, KillReason};
use crate::request::DispatchError;
use crate::watchdog::Termination;
use crate::window::WindowKind;

/// Told of every kill of an instance, on the instance's thread, after the
/// event has been logged (the pool counts kills per app with it).
pub type KillSink = Rc<dyn Fn(&KillEvent)>;

impl Instance {
    /// Names the version in kill events.
    pub fn set_version(&mut self, version: impl Into<Arc<str>>) {
        self.version = version.into();
    }

    /// Tells `sink` of every kill of this instance.
    pub fn set_kill_sink(&mut self, sink: KillSink) {
        self.kill_sink = Some(sink);
    }

    /// How the isolate was terminated by a limit, if it was.
    pub(super) fn termination(&self) -> Option<Termination> {
        self.enforcer.slot().termination()
    }

    /// Answers every request in flight after a kill, and logs and reports
    /// the kill event. The instance must be discarded afterwards.
    pub(super) fn kill(&mut self, termination: Termination) -> KillEvent {
        let reason = termination.reason;
        let (offender, cpu) = match reason {
            KillReason::StartupCpu => (None, self.enforcer.startup_used()),
            KillReason::BackgroundCpu => (None, self.enforcer.background_used()),
            KillReason::Cpu | KillReason::Memory => self
                .table
                .most_charged()
                .map_or((None, Duration::ZERO), |(id, cpu)| (Some(id), cpu)),
        };
        let (method, path) = offender
            .and_then(|id| self.table.method_and_path(id))
            .unwrap_or_default();
        let request_id =
            offender.map_or_else(String::new, |id| self.table.request_id(id).to_string());
        let heap_now = self.window(WindowKind::Other, |runtime| {
            runtime.v8_isolate().get_heap_statistics().used_heap_size()
        });
        let heap_high_water = self.heap_high_water.max(heap_now);
        let collateral = self.table.in_flight() - usize::from(offender.is_some());
        self.table.fail_all(|id| DispatchError::Killed {
            reason,
            this_request: Some(id) == offender,
        });
        let event = KillEvent {
            app: self.table.app().to_string(),
            version: self.version.to_string(),
            reason,
            method,
            path,
            request_id,
            cpu_ms: cpu.as_secs_f64() * 1000.0,
            crypto_cpu_ms: self.table.crypto().total().as_secs_f64() * 1000.0,
            heap_high_water_bytes: heap_high_water,
            stack: termination.stack,
            collateral_requests: collateral,
        };
        tracing::error!(
            target: "isopod::kill",
            app = %event.app,
            version = %event.version,
            method = %event.method,
            path = %event.path,
            request_id = %event.request_id,
            reason = event.reason.as_str(),
            cpu_ms = event.cpu_ms,
            crypto_cpu_ms = event.crypto_cpu_ms,
            heap_high_water_bytes = event.heap_high_water_bytes,
            stack = event.stack.as_deref().unwrap_or(""),
            collateral_requests = event.collateral_requests,
            "instance killed: {}; {} other request(s) in flight on it answered 503",
            event.reason.describe(),
            event.collateral_requests,
        );
        if let Some(sink) = &self.kill_sink {
            sink(&event);
        }
        event
    }
}
