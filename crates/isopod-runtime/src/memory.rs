//! An isolate's memory budget outside the V8 heap.
//!
//! ArrayBuffer contents live outside the heap, so V8's heap limit alone lets
//! `new ArrayBuffer(2 ** 30)` through. Each isolate gets its own ArrayBuffer
//! allocator that refuses an allocation which would take the isolate past
//! its budget: V8 then throws a `RangeError` in the allocating code, which
//! the handler may catch. The budget is the app's `heap_max_mb`, shared with
//! the heap: the allocator counts the heap use last sampled by the driver.
//!
//! V8 itself reacts to ArrayBuffer memory: past about half of the old
//! generation's share of `heap_max_mb` it treats external memory as a hard
//! limit and calls the near-heap-limit callback, which terminates the
//! isolate (measured here: a 32 MiB isolate is cut off at its fourth 4 MiB
//! buffer). So the allocator refuses at a third of the budget, below that
//! point: a runaway allocation of buffers fails with a catchable
//! `RangeError` instead, and V8's limit stays the backstop.
//!
//! Buffers that ops create (a fetched body, for instance) and WebAssembly
//! memories do not come through this allocator; the driver's periodic check
//! of V8's external-memory statistics covers those (see `enforcer.rs`).

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use deno_core::v8;

/// The shared counters behind one isolate's allocator.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    /// Bytes of heap plus ArrayBuffers past which allocation is refused.
    limit: usize,
    /// ArrayBuffer bytes currently allocated through the allocator.
    array_buffers: AtomicUsize,
    /// The V8 heap in use, as last sampled.
    pub(crate) heap_used: Arc<AtomicUsize>,
}

impl MemoryBudget {
    /// The budget of an isolate whose heap may grow to `heap_max` bytes.
    pub(crate) fn for_heap_max(heap_max: usize, heap_used: Arc<AtomicUsize>) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit: heap_max / 3,
            array_buffers: AtomicUsize::new(0),
            heap_used,
        })
    }

    /// ArrayBuffer bytes allocated through the allocator.
    pub(crate) fn array_buffer_bytes(&self) -> usize {
        self.array_buffers.load(Ordering::Relaxed)
    }

    fn reserve(&self, len: usize) -> bool {
        let heap = self.heap_used.load(Ordering::Relaxed);
        let mut current = self.array_buffers.load(Ordering::Relaxed);
        loop {
            let total = current.saturating_add(len).saturating_add(heap);
            if total > self.limit {
                return false;
            }
            match self.array_buffers.compare_exchange_weak(
                current,
                current + len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    fn unreserve(&self, len: usize) {
        self.array_buffers.fetch_sub(len, Ordering::Relaxed);
    }

    /// A V8 ArrayBuffer allocator drawing on this budget.
    pub(crate) fn allocator(self: &Arc<Self>) -> v8::UniqueRef<v8::Allocator> {
        static VTABLE: v8::RustAllocatorVtable<MemoryBudget> = v8::RustAllocatorVtable {
            allocate,
            allocate_uninitialized,
            free,
            drop: drop_budget,
        };
        // SAFETY: the handle is a strong reference made by `Arc::into_raw`;
        // V8 gives it back exactly once, to `drop_budget`, when the
        // allocator is destroyed with the isolate.
        unsafe { v8::new_rust_allocator(Arc::into_raw(self.clone()), &VTABLE) }
    }
}

unsafe extern "C" fn allocate(budget: &MemoryBudget, len: usize) -> *mut c_void {
    if !budget.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: calloc with a non-zero size; a null result is handled.
    let data = unsafe { libc::calloc(len.max(1), 1) };
    if data.is_null() {
        budget.unreserve(len);
    }
    data
}

unsafe extern "C" fn allocate_uninitialized(budget: &MemoryBudget, len: usize) -> *mut c_void {
    if !budget.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: malloc with a non-zero size; a null result is handled.
    let data = unsafe { libc::malloc(len.max(1)) };
    if data.is_null() {
        budget.unreserve(len);
    }
    data
}

unsafe extern "C" fn free(budget: &MemoryBudget, data: *mut c_void, len: usize) {
    // SAFETY: V8 frees only what `allocate`/`allocate_uninitialized` gave
    // it, with the length it asked for.
    unsafe { libc::free(data) };
    budget.unreserve(len);
}

unsafe extern "C" fn drop_budget(budget: *const MemoryBudget) {
    // SAFETY: the reference made by `Arc::into_raw` in `allocator`.
    drop(unsafe { Arc::from_raw(budget) });
}
