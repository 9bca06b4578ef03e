//! The limit enforcer: the [`WindowHooks`] of every instance.
//!
//! At each window's entry it reads the thread's CPU clock and arms the
//! watchdog with what is left of the budget the window runs under; at exit
//! it reads the clock again, disarms, and charges the CPU spent.
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
//!   budget.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::host::RequestTable;
use crate::limits::{KillReason, Limits};
use crate::watchdog::WatchSlot;
use crate::window::{thread_cpu_time, WindowHooks, WindowKind};

pub(crate) struct LimitEnforcer {
    slot: Arc<WatchSlot>,
    table: Rc<RequestTable>,
    cpu: Cell<Duration>,
    startup_cpu: Cell<Duration>,
    entered_at: Cell<Duration>,
    startup_used: Cell<Duration>,
    background_used: Cell<Duration>,
    total: Cell<Duration>,
}

impl LimitEnforcer {
    pub(crate) fn new(slot: Arc<WatchSlot>, table: Rc<RequestTable>, limits: &Limits) -> Self {
        LimitEnforcer {
            slot,
            table,
            cpu: Cell::new(limits.cpu()),
            startup_cpu: Cell::new(limits.startup_cpu()),
            entered_at: Cell::new(Duration::ZERO),
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
    fn entered(&self, kind: WindowKind) {
        let now = thread_cpu_time();
        self.entered_at.set(now);
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
        self.slot.arm(now, budget.saturating_sub(used), reason);
    }

    fn exiting(&self, kind: WindowKind) {
        self.slot.disarm();
        let spent = thread_cpu_time().saturating_sub(self.entered_at.get());
        self.total.set(self.total.get() + spent);
        match kind {
            WindowKind::Startup => self.startup_used.set(self.startup_used.get() + spent),
            WindowKind::Dispatch(id) => self.table.charge(id, spent),
            WindowKind::EventLoop | WindowKind::Other => {
                if !self.table.charge_all(spent) {
                    self.background_used.set(self.background_used.get() + spent);
                }
            }
        }
    }
}
