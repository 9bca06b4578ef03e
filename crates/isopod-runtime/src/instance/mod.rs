//! An instance: one isolate, one context, one loaded bundle.
//!
//! Lifecycle: [`Instance::blank`] creates the isolate from the startup
//! snapshot (the expensive part, milliseconds); [`Instance::load`] evaluates a
//! bundle in it (cheap for a small bundle); [`Instance::spawn`] hands it to a
//! driver task on the current thread's `LocalSet` and returns a
//! [`InstanceHandle`] through which requests are dispatched.
//!
//! Invariants (those of the fn0-ski seed):
//! - The isolate is exited right after creation, and every piece of V8 work
//!   runs inside a [`Window`] (enter … exit, hooks at both ends).
//! - No V8 handle or scope is held across an `.await`: futures that drive V8
//!   (module evaluation, the event loop) are polled one window per poll.
//! - Dropping is order-free: `Drop` enters the isolate, releases the globals,
//!   then drops the runtime, whose `OwnedIsolate` asserts it is current.
//! - `Instance` is `!Send` (it owns a `JsRuntime`): it lives and dies on the
//!   thread that created it.
//!
//! The module is split along the instance's jobs, one per file:
//! - `handle.rs`, the entry point: [`InstanceHandle`], what the pool holds
//!   and calls once an instance is spawned ([`Instance::spawn`]), and the
//!   commands it sends the driver.
//! - `create.rs`: [`Instance::blank`], the isolate from the snapshot, its
//!   heap limits and heap-limit callback, its watch slot, the bootstrap; and
//!   `Drop`, creation's inverse.
//! - `load.rs`: [`Instance::load`], a bundle as an ES module or a classic
//!   script, with its version's code cache, and the dispatcher's wiring.
//! - `compile.rs`: a bundle compiled from its version's shared source,
//!   offered its code cache; `code_cache.rs`: the version's code cache
//!   made after the first request of an instance loaded from source.
//! - `driver.rs`: the driver task, batched dispatch windows,
//!   `call_dispatcher`, aborts, event-loop turns and heap sampling.
//! - `kill.rs`: how a limit's termination becomes a kill event, every
//!   request in flight answered.
//!
//! This file holds what they share: the [`Instance`] itself and the window
//! every piece of its V8 work runs in.

// The entry point: what the pool holds and calls.
mod handle;

#[cfg(test)]
mod bindings_tests;
mod code_cache;
mod compile;
mod create;
mod driver;
mod kill;
mod load;
#[cfg(test)]
pub(crate) mod test_support;

pub use create::{AppConfig, InstanceError, SnapshotPolicy};
pub use handle::InstanceHandle;
pub use kill::KillSink;
pub(crate) use load::{bundle_is_module, set_globals};

use std::future::{poll_fn, Future};
use std::mem::ManuallyDrop;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use deno_core::{v8, JsRuntime};
use tokio::sync::mpsc;

use crate::enforcer::LimitEnforcer;
use crate::instance_host::{Control, InstanceHost};
use crate::loader::BundleLoader;
use crate::memory::MemoryBudget;
use crate::window::{Window, WindowKind};
use handle::QueueWait;

/// One isolate running (or ready to run) one bundle.
pub struct Instance {
    // Field order does not matter: `Drop` releases the V8 state explicitly.
    /// The isolate owned by `runtime`, as a stable raw pointer (the
    /// `OwnedIsolate` inside the runtime moves with it; the isolate does not).
    isolate: v8::UnsafeRawIsolatePtr,
    /// The window hooks: CPU accounting and deadlines.
    enforcer: Rc<LimitEnforcer>,
    memory: Arc<MemoryBudget>,
    heap_high_water: usize,
    /// The version label kill events carry.
    version: Arc<str>,
    kill_sink: Option<KillSink>,
    table: Rc<InstanceHost>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    loader: Rc<BundleLoader>,
    /// How long dispatches wait in this instance's queue (shared with its
    /// handles).
    queue_wait: Rc<QueueWait>,
    /// The V8 heap in use, sampled by the driver (shared with its handles).
    heap_used: Arc<AtomicUsize>,
    heap_sampled: Option<std::time::Instant>,
    /// Dispatch batches so far (the driver's idleness test).
    dispatches: u64,
    /// The bootstrap's `init(exported, env)`, until a bundle is loaded.
    init: Option<v8::Global<v8::Function>>,
    /// Shared with each window that calls into it for the window's length
    /// (an `Rc` clone: cloning a `v8::Global` makes a new global handle).
    dispatcher: Option<Rc<Dispatcher>>,
    /// The compiled script an instance loaded from source keeps until its
    /// first request ran, to make its version's code cache then.
    pending_code_cache: Option<code_cache::PendingCodeCache>,
    /// A module compiled before deno_core's compile of it, while that
    /// compile runs (see `compile.rs`).
    precompiled_module: Option<compile::PrecompiledModule>,
    runtime: ManuallyDrop<JsRuntime>,
    /// The version snapshot the isolate was made from, if not the embedded
    /// one: it must outlive the isolate (V8 and deno_core keep pointers into
    /// it), so `Drop` releases it after `runtime`.
    startup_bytes: Option<Arc<[u8]>>,
}

struct Dispatcher {
    dispatch: v8::Global<v8::Function>,
    abort: v8::Global<v8::Function>,
    /// The main context, held here so that entering it per request makes a
    /// local handle only (deno_core's `scope!` clones the runtime's global
    /// handle to it, a global handle made and destroyed per call).
    context: v8::Global<v8::Context>,
}

impl Instance {
    /// The bytes of its own this instance keeps resident, as last sampled:
    /// the most heap it has used and its ArrayBuffer memory (a graveyard
    /// counts them as on their way back).
    pub(crate) fn resident_estimate(&self) -> u64 {
        let heap = self
            .heap_high_water
            .max(self.heap_used.load(std::sync::atomic::Ordering::Relaxed));
        (heap + self.memory.array_buffer_bytes()) as u64
    }

    /// Runs `work` inside one window on this instance's isolate.
    fn window<R>(&mut self, kind: WindowKind, work: impl FnOnce(&mut JsRuntime) -> R) -> R {
        // SAFETY: `self.isolate` is the live isolate of `self.runtime`, owned
        // by this thread; the window ends before this function returns.
        let _window = unsafe { Window::enter(self.isolate, &*self.enforcer, kind) };
        work(&mut self.runtime)
    }

    /// Drives a future that works on the runtime, one window per poll, so no
    /// V8 state is live while it is suspended.
    async fn windowed<'a, T>(
        &'a mut self,
        kind: WindowKind,
        make: impl FnOnce(&'a mut JsRuntime) -> std::pin::Pin<Box<dyn Future<Output = T> + 'a>>,
    ) -> T {
        let isolate = self.isolate;
        let hooks = self.enforcer.clone();
        let mut future = {
            // SAFETY: creating the future may touch V8 (some deno_core
            // methods start work eagerly), so it is created inside a window.
            let _window = unsafe { Window::enter(isolate, &*hooks, kind) };
            make(&mut self.runtime)
        };
        poll_fn(|cx| {
            // SAFETY: the isolate outlives this future (it borrows `self`).
            let _window = unsafe { Window::enter(isolate, &*hooks, kind) };
            future.as_mut().poll(cx)
        })
        .await
    }
}
