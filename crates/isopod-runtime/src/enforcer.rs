//! The limit enforcer: where every per-isolate limit is decided.
//!
//! The rest of the instance only reports (a window's entry and exit, a
//! heap sample, V8's near-heap-limit call, the driver's periodic check of
//! requests that linger) and does what the enforcer answers; adding a limit
//! is a change here and in [`Limits`]. As workerd's `LimitEnforcer`, it
//! decides:
//! - CPU per request, at start-up and for background work (below);
//! - memory: the heap and ArrayBuffer memory against `heap_max_mb`, from
//!   the driver's samples and V8's near-heap-limit callback
//!   ([`LimitEnforcer::check_memory`], [`LimitEnforcer::near_heap_limit`]);
//! - how long `waitUntil` work may linger after its response
//!   ([`LimitEnforcer::expire_lingering`]);
//! - the limits it hands to the mechanisms that time them on their own: a
//!   streamed body's idle time (the pump) and subrequests per request (the
//!   bootstrap's `fetch`).
//!
//! Limits of the HTTP exchange rather than of the isolate (the response
//! timeout, the request body's size, an app's concurrency) are the HTTP
//! layer's (isopod-server).
//!
//! CPU. At each window's entry it takes the thread's CPU time (a fresh or a
//! recent reading, `cpu_clock.rs`) and arms the watchdog with what is left
//! of the budget the window runs under; at exit it disarms and charges the
//! window's CPU (its wall time, for a short window, which bounds it).
//!
//! Attribution (the invariant: no request escapes its budget by
//! interleaving with others):
//! - a dispatch window runs one request's handler up to its first `await`:
//!   its CPU is charged to that request alone;
//! - an event-loop window may run continuations of several requests of the
//!   instance (promise reactions, timers, stream pulls) and V8 does not say
//!   which ran for how long, so its CPU is charged in full to every request
//!   in flight on the instance, and the window's budget is what the most
//!   charged of them has left. A request may thus be charged for its
//!   neighbours' work, never less than its own;
//! - a window with no request in flight (timers left behind by finished
//!   requests) is charged to the instance's background account, which a
//!   new dispatch resets; it has the same budget as one request;
//! - start-up windows (bundle evaluation) are charged to the start-up
//!   budget;
//! - CPU spent off the isolate's thread, by the instance's crypto thread
//!   (`crypto_pool.rs`), is read at the entry of each window but a
//!   dispatch and charged like an event-loop window's: to every request in flight (or to start-up, or to
//!   the background account). A crypto operation cannot be interrupted, so
//!   it is charged once it has run; the operations' costs are capped so
//!   that one cannot run long (the bootstrap's WebCrypto bounds).
//!
//! A window entered with its budget already spent (what was just charged
//! for crypto, or CPU a short window used past the watchdog's tick) is
//! terminated at once, before any JavaScript runs in it.

use std::cell::{Cell, Ref, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::cpu_clock;
use crate::instance_host::InstanceHost;
use crate::limits::{KillReason, Limits};
use crate::watchdog::WatchSlot;
use crate::window::{WindowHooks, WindowKind};

pub(crate) struct LimitEnforcer {
    slot: Arc<WatchSlot>,
    table: Rc<InstanceHost>,
    /// The app's limits; the CPU budgets also in `cpu` and `startup_cpu`,
    /// read at every window.
    limits: RefCell<Limits>,
    cpu: Cell<Duration>,
    startup_cpu: Cell<Duration>,
    window_start: Cell<cpu_clock::WindowStart>,
    startup_used: Cell<Duration>,
    background_used: Cell<Duration>,
    total: Cell<Duration>,
}

impl LimitEnforcer {
    pub(crate) fn new(slot: Arc<WatchSlot>, table: Rc<InstanceHost>, limits: &Limits) -> Self {
        table.set_stream_idle_timeout(limits.stream_idle_timeout());
        LimitEnforcer {
            slot,
            table,
            limits: RefCell::new(limits.clone()),
            cpu: Cell::new(limits.cpu()),
            startup_cpu: Cell::new(limits.startup_cpu()),
            window_start: Cell::new(cpu_clock::WindowStart::never()),
            startup_used: Cell::new(Duration::ZERO),
            background_used: Cell::new(Duration::ZERO),
            total: Cell::new(Duration::ZERO),
        }
    }

    /// Adopts an app's budgets (a blank instance is made before its app is
    /// known).
    pub(crate) fn set_limits(&self, limits: &Limits) {
        self.cpu.set(limits.cpu());
        self.startup_cpu.set(limits.startup_cpu());
        self.table
            .set_stream_idle_timeout(limits.stream_idle_timeout());
        *self.limits.borrow_mut() = limits.clone();
    }

    /// The app's limits.
    pub(crate) fn limits(&self) -> Ref<'_, Limits> {
        self.limits.borrow()
    }

    /// Outbound `fetch` calls a request may make (the bootstrap counts
    /// them).
    pub(crate) fn subrequests(&self) -> u32 {
        self.limits.borrow().subrequests
    }

    /// V8's near-heap-limit callback: the heap is at `current` bytes, of
    /// which `used` are in use; returns the limit V8 may grow to. When the
    /// heap itself is full the isolate is terminated (V8 would otherwise
    /// abort the process) and given room to get there; when it is not (V8
    /// also calls this when ArrayBuffer memory presses, as its last resort
    /// before refusing a buffer, which the allocator bounds and JavaScript
    /// sees as a RangeError) it gets a little room and lives.
    pub(crate) fn near_heap_limit(&self, current: usize, used: usize) -> usize {
        if used < current / 2 {
            return current.saturating_add(current / 4);
        }
        self.slot.terminate_here(KillReason::Memory);
        current.saturating_mul(2)
    }

    /// A sample of the isolate's memory, taken by the driver after an
    /// event-loop window: its heap in use, and its memory outside the heap
    /// (V8's external-memory figure, which sees buffers made by ops and
    /// WebAssembly memories, and the ArrayBuffer allocator's count). Over
    /// `heap_max_mb`, garbage may still count: the driver is asked to
    /// collect it and report again (`collected`), and over it still, the
    /// isolate is terminated.
    pub(crate) fn check_memory(&self, sample: MemorySample, collected: bool) -> MemoryCheck {
        let heap_max = self.limits.borrow().heap_max_bytes();
        let in_use = sample
            .heap_used
            .saturating_add(sample.external.max(sample.array_buffers));
        if in_use <= heap_max {
            return MemoryCheck::Within;
        }
        if !collected {
            return MemoryCheck::CollectAndReport;
        }
        self.slot.terminate_here(KillReason::Memory);
        MemoryCheck::Exceeded
    }

    /// Stops waiting for requests whose response went out (or whose client
    /// left) longer ago than `wait_until_timeout_ms` and whose `waitUntil`
    /// work is still unsettled, and logs each. Called by the driver while
    /// requests are in flight.
    pub(crate) fn expire_lingering(&self) {
        let timeout = self.limits.borrow().wait_until_timeout();
        for label in self.table.expire_lingering(timeout) {
            tracing::warn!(
                target: "isopod::handler",
                app = %self.table.app(),
                request = %label,
                "waitUntil work (or an abandoned handler) still unsettled {} ms after the response; no longer waited for",
                timeout.as_millis()
            );
        }
    }

    /// CPU spent in this instance's windows so far.
    pub(crate) fn total(&self) -> Duration {
        self.total.get()
    }

    /// CPU charged to start-up so far.
    pub(crate) fn startup_used(&self) -> Duration {
        self.startup_used.get()
    }

    /// CPU charged to background work since the last dispatch.
    pub(crate) fn background_used(&self) -> Duration {
        self.background_used.get()
    }

    pub(crate) fn slot(&self) -> &Arc<WatchSlot> {
        &self.slot
    }
}

impl WindowHooks for LimitEnforcer {
    fn entered(&self, kind: WindowKind, at_ns: u64) {
        let start = cpu_clock::window_start(at_ns);
        self.window_start.set(start);
        let now = start.cpu;
        // Crypto results come back in event-loop windows, which follow every
        // batch of dispatches, so the crypto thread's clock (a system call
        // while that thread lives) is read there and not again per dispatch.
        if !matches!(kind, WindowKind::Dispatch(_)) {
            self.charge_shared(kind, self.table.crypto().take_uncharged());
        }
        let cpu = self.cpu.get();
        let (used, budget, reason) = match kind {
            WindowKind::Startup => (
                self.startup_used.get(),
                self.startup_cpu.get(),
                KillReason::StartupCpu,
            ),
            WindowKind::Dispatch(id) => {
                self.background_used.set(Duration::ZERO);
                (self.table.cpu_used(id), cpu, KillReason::Cpu)
            }
            WindowKind::EventLoop | WindowKind::Other => match self.table.most_charged() {
                Some((_, used)) => (used, cpu, KillReason::Cpu),
                None => (self.background_used.get(), cpu, KillReason::BackgroundCpu),
            },
        };
        if used >= budget {
            self.slot.terminate_here(reason);
            return;
        }
        self.slot.arm(at_ns, now, budget - used, reason);
    }

    fn exiting(&self, kind: WindowKind, at_ns: u64) {
        self.slot.disarm();
        let spent = cpu_clock::window_spent(self.window_start.get(), at_ns);
        self.total.set(self.total.get() + spent);
        match kind {
            WindowKind::Dispatch(id) => self.table.charge(id, spent),
            _ => self.charge_shared(kind, spent),
        }
    }
}

impl LimitEnforcer {
    /// Charges CPU that may have served any request in flight: to start-up
    /// during start-up, else to every request in flight, else to the
    /// background account.
    fn charge_shared(&self, kind: WindowKind, spent: Duration) {
        if spent.is_zero() {
            return;
        }
        if kind == WindowKind::Startup {
            self.startup_used.set(self.startup_used.get() + spent);
        } else if !self.table.charge_all(spent) {
            self.background_used.set(self.background_used.get() + spent);
        }
    }
}

/// An isolate's memory, as the driver samples it (bytes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemorySample {
    /// V8's heap in use.
    pub(crate) heap_used: usize,
    /// V8's external-memory figure.
    pub(crate) external: usize,
    /// The ArrayBuffer allocator's count.
    pub(crate) array_buffers: usize,
}

/// What [`LimitEnforcer::check_memory`] asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryCheck {
    /// Within the budget.
    Within,
    /// Over it, perhaps by garbage: collect, then report again.
    CollectAndReport,
    /// Over it after a collection: the isolate is terminated.
    Exceeded,
}
