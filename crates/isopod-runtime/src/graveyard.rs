//! Stopped instances waiting to be dropped.
//!
//! Tearing an isolate down costs milliseconds on its thread. An instance
//! spawned with a graveyard is buried there when its driver stops instead of
//! being dropped on the spot, and whoever owns the thread drops it with
//! [`Graveyard::reap_one`] at a moment when that thread has nothing better to
//! do. Its handles' `stopped()` resolves at burial: it serves nothing more.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use tokio::sync::Notify;

use crate::Instance;

/// Stopped instances of one thread, oldest first.
#[derive(Clone, Default)]
pub struct Graveyard {
    dead: Rc<RefCell<VecDeque<Instance>>>,
    /// Signalled at each burial, so a reaper waits for one instead of
    /// polling an empty graveyard.
    buried: Rc<Notify>,
}

impl Graveyard {
    pub(crate) fn bury(&self, instance: Instance) {
        self.dead.borrow_mut().push_back(instance);
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
        let next = self.dead.borrow_mut().pop_front();
        let Some(instance) = next else {
            return false;
        };
        drop(instance);
        true
    }
}
