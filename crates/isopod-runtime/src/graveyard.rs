//! Stopped instances waiting to be dropped.
//!
//! Tearing an isolate down costs milliseconds on its thread. An instance
//! spawned with a graveyard is buried there when its driver stops instead of
//! being dropped on the spot, and whoever owns the thread drops it with
//! [`Graveyard::reap_one`] at a moment when that thread has nothing better to
//! do (or at once, with [`Graveyard::reap_all`], when memory is wanted
//! now). Its handles' `stopped()` resolves at burial: it serves nothing more.
//!
//! What the buried instances still hold is counted ([`Releasing`]): memory
//! on its way back, which a memory budget need not hold against new
//! instances elsewhere.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::Instance;

/// What an isolate made from the snapshot holds beyond its heap and its
/// buffers (its deserialised snapshot, V8's and deno_core's per-isolate
/// state): about 2.5 MiB resident, as measured per idle instance (see
/// docs/performance.md).
const ISOLATE_BASE_BYTES: u64 = 5 << 19;

/// Memory held by buried instances not yet dropped, and how many they are,
/// shared by every graveyard that counts into it (one per thread of a
/// pool); and what an instance typically holds, learnt from the buried
/// ones.
#[derive(Debug)]
pub struct Releasing {
    bytes: AtomicU64,
    instances: AtomicUsize,
    /// A moving average of the bytes buried instances held.
    typical: AtomicU64,
}

impl Default for Releasing {
    fn default() -> Releasing {
        Releasing {
            bytes: AtomicU64::new(0),
            instances: AtomicUsize::new(0),
            typical: AtomicU64::new(ISOLATE_BASE_BYTES),
        }
    }
}

impl Releasing {
    /// What an instance typically holds (bytes), from those buried so far
    /// (an isolate's own memory before any was).
    pub fn typical_instance_bytes(&self) -> u64 {
        self.typical.load(Ordering::Relaxed)
    }

    /// Bytes the buried instances hold, as estimated at burial (heap in use,
    /// ArrayBuffer memory, and the isolate's own).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Instances buried and not yet dropped.
    pub fn instances(&self) -> usize {
        self.instances.load(Ordering::Acquire)
    }
}

/// Stopped instances of one thread, oldest first, each with the bytes it
/// was counted for.
#[derive(Clone, Default)]
pub struct Graveyard {
    dead: Rc<RefCell<VecDeque<(Instance, u64)>>>,
    /// Signalled at each burial, so a reaper waits for one instead of
    /// polling an empty graveyard.
    buried: Rc<Notify>,
    releasing: Arc<Releasing>,
}

impl Graveyard {
    /// A graveyard that counts what it holds into `releasing`.
    pub fn counting_into(releasing: Arc<Releasing>) -> Graveyard {
        Graveyard {
            releasing,
            ..Graveyard::default()
        }
    }

    pub(crate) fn bury(&self, instance: Instance) {
        let bytes = instance.resident_estimate() + ISOLATE_BASE_BYTES;
        // An average over the last few burials (weight 1/4), racy across
        // threads but never far off.
        let typical = self.releasing.typical.load(Ordering::Relaxed);
        self.releasing
            .typical
            .store(typical - typical / 4 + bytes / 4, Ordering::Relaxed);
        self.releasing.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.releasing.instances.fetch_add(1, Ordering::AcqRel);
        self.dead.borrow_mut().push_back((instance, bytes));
        self.buried.notify_one();
    }

    /// Resolves once something waits to be dropped (at once if something
    /// already does).
    pub async fn occupied(&self) {
        while self.is_empty() {
            self.buried.notified().await;
        }
    }

    /// Stopped instances not yet dropped.
    pub fn len(&self) -> usize {
        self.dead.borrow().len()
    }

    /// Whether nothing waits to be dropped.
    pub fn is_empty(&self) -> bool {
        self.dead.borrow().is_empty()
    }

    /// Drops the oldest stopped instance; false when there is none.
    pub fn reap_one(&self) -> bool {
        self.reap_oldest().is_some()
    }

    /// Drops every stopped instance now; returns how many, and the bytes
    /// they were counted for.
    pub fn reap_all(&self) -> (usize, u64) {
        let mut reaped = (0, 0);
        while let Some(bytes) = self.reap_oldest() {
            reaped = (reaped.0 + 1, reaped.1 + bytes);
        }
        reaped
    }

    /// Drops the oldest stopped instance and stops counting it; the bytes
    /// it was counted for, or `None` when there is none.
    fn reap_oldest(&self) -> Option<u64> {
        let (instance, bytes) = self.dead.borrow_mut().pop_front()?;
        drop(instance);
        self.releasing.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.releasing.instances.fetch_sub(1, Ordering::AcqRel);
        Some(bytes)
    }
}
