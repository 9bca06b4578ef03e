//! The limit enforcer: the [`WindowHooks`] of every instance.
//!
//! At each window's entry it takes the thread's CPU time (a fresh or a
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

use std::cell::Cell;
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
    cpu: Cell<Duration>,
    startup_cpu: Cell<Duration>,
    window_start: Cell<cpu_clock::WindowStart>,
    startup_used: Cell<Duration>,
    background_used: Cell<Duration>,
    total: Cell<Duration>,
}

impl LimitEnforcer {
    pub(crate) fn new(slot: Arc<WatchSlot>, table: Rc<InstanceHost>, limits: &Limits) -> Self {
        LimitEnforcer {
            slot,
            table,
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
