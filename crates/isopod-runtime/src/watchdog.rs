//! The process's one watchdog thread.
//!
//! Invariants:
//! - The watchdog never enters an isolate. It holds only each instance's
//!   [`WatchSlot`]: an `IsolateHandle` (which V8 makes safe to use from any
//!   thread), the owning thread's CPU clock id, and atomics.
//! - Arming and disarming (at every window's entry and exit) are a few
//!   atomic stores: no lock, no syscall, no wake-up of the watchdog.
//! - The watchdog only signals. Past a deadline it requests an interrupt;
//!   the interrupt runs on the isolate's own thread, checks the deadline
//!   again against that thread's CPU clock (so a stale request from a window
//!   that has since ended does nothing), captures the JavaScript stack and
//!   terminates execution there.
//! - Deadlines are CPU time, not wall time: the watchdog looks at a slot
//!   only when as much wall time has passed as the CPU budget left (wall
//!   time never runs slower than a thread's CPU time), then reads the
//!   thread's CPU clock and sleeps again for what remains.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use deno_core::v8;

use crate::limits::KillReason;

/// How often the watchdog looks at armed slots: the precision of every CPU
/// limit.
const TICK: Duration = Duration::from_millis(2);

/// Frames kept from the stack of a terminated script.
const STACK_FRAMES: usize = 16;

/// How an instance was terminated, recorded on its own thread.
#[derive(Debug, Clone)]
pub(crate) struct Termination {
    pub(crate) reason: KillReason,
    pub(crate) stack: Option<String>,
}

/// One instance's entry in the watchdog.
pub(crate) struct WatchSlot {
    handle: v8::IsolateHandle,
    /// The CPU clock of the thread that owns the isolate.
    clock: libc::clockid_t,
    /// The armed deadline on the owning thread's CPU clock, in ns; 0 when
    /// no window is open.
    cpu_deadline_ns: AtomicU64,
    /// What going past the armed deadline means (a `KillReason` as `u8`).
    reason: AtomicU8,
    /// When the watchdog should next read the CPU clock, as
    /// `isopod_api::monotonic_ns`.
    next_check_ns: AtomicU64,
    /// An interrupt has been requested and has not run yet.
    interrupt_pending: AtomicBool,
    /// Set once, on the isolate's thread, when the instance is terminated.
    terminated: Mutex<Option<Termination>>,
}

impl WatchSlot {
    /// Registers an instance whose isolate is owned by the calling thread.
    pub(crate) fn register(handle: v8::IsolateHandle) -> Arc<WatchSlot> {
        let slot = Arc::new(WatchSlot {
            handle,
            clock: crate::cpu_clock::current_thread_clock(),
            cpu_deadline_ns: AtomicU64::new(0),
            reason: AtomicU8::new(KillReason::Cpu as u8),
            next_check_ns: AtomicU64::new(0),
            interrupt_pending: AtomicBool::new(false),
            terminated: Mutex::new(None),
        });
        watchdog().add(&slot);
        slot
    }

    /// Arms the slot: the window that has just been entered, at
    /// `entered_ns` (as `isopod_api::monotonic_ns`) with the thread's CPU
    /// clock reading `cpu_now`, may run for `budget` of CPU.
    pub(crate) fn arm(
        &self,
        entered_ns: u64,
        cpu_now: Duration,
        budget: Duration,
        reason: KillReason,
    ) {
        self.reason.store(reason as u8, Ordering::Relaxed);
        // The window's entry instant, not a reading of its own.
        self.next_check_ns
            .store(entered_ns.saturating_add(nanos(budget)), Ordering::Relaxed);
        // Published last: a deadline the watchdog sees comes with its
        // check time and reason.
        self.cpu_deadline_ns.store(
            nanos(cpu_now).saturating_add(nanos(budget)).max(1),
            Ordering::Release,
        );
    }

    /// Disarms the slot at a window's exit.
    pub(crate) fn disarm(&self) {
        self.cpu_deadline_ns.store(0, Ordering::Release);
    }

    /// Terminates the isolate now, from its own thread (the heap limit's
    /// callback does this: V8 is inside a GC and cannot run an interrupt).
    pub(crate) fn terminate_here(&self, reason: KillReason) {
        self.record(Termination {
            reason,
            stack: None,
        });
        self.handle.terminate_execution();
    }

    /// How the instance was terminated, if it was.
    pub(crate) fn termination(&self) -> Option<Termination> {
        self.terminated.lock().ok().and_then(|t| t.clone())
    }

    fn record(&self, termination: Termination) {
        if let Ok(mut slot) = self.terminated.lock() {
            slot.get_or_insert(termination);
        }
    }

    /// Called by the watchdog thread on each tick.
    fn check(self: &Arc<Self>, now_ns: u64) {
        let deadline = self.cpu_deadline_ns.load(Ordering::Acquire);
        if deadline == 0 || now_ns < self.next_check_ns.load(Ordering::Relaxed) {
            return;
        }
        let cpu = nanos(crate::cpu_clock::read(self.clock));
        if cpu < deadline {
            self.next_check_ns
                .store(now_ns + (deadline - cpu), Ordering::Relaxed);
            return;
        }
        if self.interrupt_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let data = Arc::into_raw(self.clone()) as *mut c_void;
        if !self.handle.request_interrupt(on_interrupt, data) {
            // The isolate is gone; take the reference back.
            // SAFETY: `data` came from `Arc::into_raw` just above and V8
            // did not keep it.
            drop(unsafe { Arc::from_raw(data as *const WatchSlot) });
        }
    }
}

/// Runs on the isolate's own thread, inside whatever JavaScript it was
/// running.
///
/// # Safety
/// `data` is a `WatchSlot` reference made by `Arc::into_raw` in
/// [`WatchSlot::check`]; V8 calls this at most once per request.
unsafe extern "C" fn on_interrupt(isolate: v8::UnsafeRawIsolatePtr, data: *mut c_void) {
    // SAFETY: see the function's contract; this takes the reference back.
    let slot = unsafe { Arc::from_raw(data as *const WatchSlot) };
    slot.interrupt_pending.store(false, Ordering::Release);
    let deadline = slot.cpu_deadline_ns.load(Ordering::Acquire);
    // On this thread the window state is exact: a request from a window
    // that has ended, or one whose budget was renewed, is stale.
    if deadline == 0 || nanos(crate::cpu_clock::thread_cpu_time()) < deadline {
        return;
    }
    let reason = KillReason::from_u8(slot.reason.load(Ordering::Relaxed));
    // SAFETY: V8 passes the isolate it is running on this thread.
    let mut isolate = unsafe { v8::Isolate::from_raw_isolate_ptr(isolate) };
    let stack = CONTEXTS.with(|contexts| {
        let contexts = contexts.borrow();
        let context = contexts.get(&Arc::as_ptr(&slot))?;
        capture_stack(&mut isolate, context)
    });
    slot.record(Termination { reason, stack });
    isolate.terminate_execution();
}

/// The current JavaScript stack as `at name (file:line:column)` lines.
fn capture_stack(isolate: &mut v8::Isolate, context: &v8::Global<v8::Context>) -> Option<String> {
    v8::scope_with_context!(scope, isolate, context);
    let trace = v8::StackTrace::current_stack_trace(scope, STACK_FRAMES)?;
    let mut lines = Vec::new();
    for index in 0..trace.get_frame_count() {
        let Some(frame) = trace.get_frame(scope, index) else {
            continue;
        };
        let function = frame
            .get_function_name(scope)
            .map(|name| name.to_rust_string_lossy(scope))
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "<anonymous>".into());
        let script = frame
            .get_script_name(scope)
            .map(|name| name.to_rust_string_lossy(scope))
            .unwrap_or_default();
        lines.push(format!(
            "at {function} ({script}:{}:{})",
            frame.get_line_number(),
            frame.get_column()
        ));
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

thread_local! {
    /// The main context of each instance of this thread, by its slot, so an
    /// interrupt (which V8 hands only the isolate) can open a scope to read
    /// the stack in.
    static CONTEXTS: std::cell::RefCell<std::collections::HashMap<*const WatchSlot, v8::Global<v8::Context>>> =
        Default::default();
}

/// Remembers `slot`'s instance's main context for stack capture.
pub(crate) fn remember_context(slot: &Arc<WatchSlot>, context: v8::Global<v8::Context>) {
    CONTEXTS.with(|contexts| contexts.borrow_mut().insert(Arc::as_ptr(slot), context));
}

/// Forgets it again; called with the isolate entered, before it is dropped.
pub(crate) fn forget_context(slot: &Arc<WatchSlot>) {
    let context = CONTEXTS.with(|contexts| contexts.borrow_mut().remove(&Arc::as_ptr(slot)));
    drop(context);
}

struct Watchdog {
    slots: Mutex<Vec<Weak<WatchSlot>>>,
}

impl Watchdog {
    /// Now, on the scale windows are armed with (`isopod_api::monotonic_ns`).
    fn now_ns(&self) -> u64 {
        isopod_api::monotonic_ns(Instant::now())
    }

    fn add(&self, slot: &Arc<WatchSlot>) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.push(Arc::downgrade(slot));
        }
    }

    fn run(&self) {
        let mut live = Vec::new();
        loop {
            std::thread::sleep(TICK);
            live.clear();
            if let Ok(mut slots) = self.slots.lock() {
                slots.retain(|slot| match slot.upgrade() {
                    Some(slot) => {
                        live.push(slot);
                        true
                    }
                    None => false,
                });
            }
            let now = self.now_ns();
            for slot in &live {
                slot.check(now);
            }
        }
    }
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let watchdog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            slots: Mutex::new(Vec::new()),
        }));
        std::thread::Builder::new()
            .name("isopod-watchdog".into())
            .spawn(move || watchdog.run())
            .expect("the watchdog thread starts");
        watchdog
    })
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
