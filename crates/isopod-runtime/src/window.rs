//! The synchronous V8 window: the only way isopod runs anything in an
//! isolate.
//!
//! Several isolates share each thread, so no isolate may stay "current" on
//! the thread between two pieces of work: a window enters the isolate, calls
//! the [`WindowHooks`] at entry, runs the work, calls the hooks at exit, and
//! exits the isolate — also on early return and on panic (the guard's drop
//! does the exit). Nothing that holds a V8 handle or scope outlives a window,
//! so every `.await` sees the thread's isolate stack as it was before.
//! Entering a window is also what advances the clock tenant code reads.
//!
//! A window's entry reads the monotonic clock once, and that instant serves
//! everything timed at it: the tenant's clock, the CPU accounting's base,
//! and the bookkeeping of the work done inside the window
//! ([`entered_at`]), which is at most the window's length early.
//!
//! A window may be cut into segments ([`Window::switch`]), each accounted
//! as a window of its own kind: the hooks see an exit and an entry at one
//! clock reading, and the tenant's clock moves there, but the isolate stays
//! entered. A batch of dispatches shares one window this way, and pays for
//! entering the isolate and its context once.

use std::cell::Cell;
use std::time::Instant;

use deno_core::v8;

/// What a window is doing, for the hooks' accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Creating or loading the isolate: extension set-up, bundle evaluation.
    Startup,
    /// Handing the request with this id to the JavaScript dispatcher.
    Dispatch(u32),
    /// One poll of the isolate's event loop.
    EventLoop,
    /// Anything else (abort signals, teardown).
    Other,
}

/// Called at the entry and exit of every window of one instance. The limit
/// enforcer (`enforcer.rs`) hangs CPU accounting and deadlines here.
pub trait WindowHooks {
    /// The isolate has just been entered, `at_ns` this instant (as
    /// `isopod_api::monotonic_ns`).
    fn entered(&self, kind: WindowKind, at_ns: u64);
    /// The work is done, `at_ns` this instant; the isolate is about to be
    /// exited (or the window goes on as another segment).
    fn exiting(&self, kind: WindowKind, at_ns: u64);
}

/// An entered isolate; exiting happens on drop.
pub(crate) struct Window<'h> {
    isolate: v8::Isolate,
    hooks: &'h dyn WindowHooks,
    kind: WindowKind,
}

impl<'h> Window<'h> {
    /// Enters `isolate`.
    ///
    /// # Safety
    /// `isolate` must point to a live isolate owned by this thread that
    /// outlives the window.
    pub(crate) unsafe fn enter(
        isolate: v8::UnsafeRawIsolatePtr,
        hooks: &'h dyn WindowHooks,
        kind: WindowKind,
    ) -> Window<'h> {
        // SAFETY: the caller guarantees the isolate is live and ours; this
        // `Isolate` is a non-owning view of it.
        let isolate = unsafe { v8::Isolate::from_raw_isolate_ptr(isolate) };
        // SAFETY: as above.
        unsafe { isolate.enter() };
        let window = Window {
            isolate,
            hooks,
            kind,
        };
        let at = Instant::now();
        window.begin(at, isopod_api::monotonic_ns(at));
        window
    }

    /// Ends the current segment and starts one of `kind`, at one clock
    /// reading; the isolate stays entered.
    pub(crate) fn switch(&mut self, kind: WindowKind) {
        let at = Instant::now();
        let at_ns = isopod_api::monotonic_ns(at);
        self.hooks.exiting(self.kind, at_ns);
        self.kind = kind;
        self.begin(at, at_ns);
    }

    /// Starts the current segment at `at` (`at_ns` as
    /// `isopod_api::monotonic_ns`).
    fn begin(&self, at: Instant, at_ns: u64) {
        ENTERED_AT.set(Some(at));
        // Time moves only here, between segments: JavaScript sees one
        // instant for a whole segment (isopod_api's coarse clock).
        isopod_api::advance_clock(&self.isolate, at_ns);
        self.hooks.entered(self.kind, at_ns);
    }
}

thread_local! {
    /// When this thread last entered a window.
    static ENTERED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// When this thread last entered a window or segment (the current one,
/// inside a window): a timestamp for work done in it, without a clock read
/// of its own. `None` before the thread's first window.
pub(crate) fn entered_at() -> Option<Instant> {
    ENTERED_AT.get()
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        self.hooks
            .exiting(self.kind, isopod_api::monotonic_ns(Instant::now()));
        // SAFETY: entered in `Window::enter`, on this thread, and every window
        // opened inside this one has already been dropped, so this isolate is
        // the thread's current one.
        unsafe { self.isolate.exit() };
    }
}
