//! A semaphore for tasks of one thread: an instance's cap on the requests it
//! works on at once.
//!
//! tokio's `Semaphore` is made for many threads: every release takes its
//! waiters' mutex, on every request. This one is `Rc` and `Cell`.
//!
//! Invariants:
//! - Waiters are served in arrival order: a released permit goes to the
//!   first waiter (it is handed over, not put back, so a newcomer cannot
//!   take it first).
//! - A waiter dropped before it ran (its request cancelled) gives back a
//!   permit it was handed, and otherwise leaves the queue: no permit is
//!   lost and no dropped waiter is woken.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A count of permits, shared by the tasks of one thread.
pub(crate) struct LocalSemaphore {
    available: Cell<usize>,
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
}

struct Waiter {
    /// A permit has been handed to this waiter.
    granted: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// A permit; given back when dropped.
pub(crate) struct LocalPermit<'a>(&'a LocalSemaphore);

impl LocalSemaphore {
    /// A semaphore with `permits` permits.
    pub(crate) fn new(permits: usize) -> LocalSemaphore {
        LocalSemaphore {
            available: Cell::new(permits),
            waiters: RefCell::new(VecDeque::new()),
        }
    }

    /// Waits for a permit, behind every earlier waiter.
    pub(crate) fn acquire(&self) -> Acquire<'_> {
        Acquire {
            semaphore: self,
            waiter: None,
        }
    }

    /// Takes a permit if one is free now (none is while anyone waits, see
    /// `available`), to be given back with [`LocalSemaphore::release`].
    pub(crate) fn try_acquire(&self) -> bool {
        let available = self.available.get();
        if available == 0 {
            return false;
        }
        self.available.set(available - 1);
        true
    }

    /// Hands a permit to the first waiter, or puts it back.
    pub(crate) fn release(&self) {
        let first = self.waiters.borrow_mut().pop_front();
        match first {
            Some(waiter) => {
                waiter.granted.set(true);
                if let Some(waker) = waiter.waker.borrow_mut().take() {
                    waker.wake();
                }
            }
            None => self.available.set(self.available.get() + 1),
        }
    }
}

impl Drop for LocalPermit<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The future of [`LocalSemaphore::acquire`].
pub(crate) struct Acquire<'a> {
    semaphore: &'a LocalSemaphore,
    /// Its place in the queue, once it had to wait.
    waiter: Option<Rc<Waiter>>,
}

impl<'a> Future for Acquire<'a> {
    type Output = LocalPermit<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LocalPermit<'a>> {
        let semaphore = self.semaphore;
        match &self.waiter {
            Some(waiter) if waiter.granted.get() => {
                self.waiter = None;
                Poll::Ready(LocalPermit(semaphore))
            }
            Some(waiter) => {
                *waiter.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
            None if semaphore.available.get() > 0 => {
                // Only when nobody waits: waiters are handed permits
                // directly, so `available` is zero while any wait.
                semaphore.available.set(semaphore.available.get() - 1);
                Poll::Ready(LocalPermit(semaphore))
            }
            None => {
                let waiter = Rc::new(Waiter {
                    granted: Cell::new(false),
                    waker: RefCell::new(Some(cx.waker().clone())),
                });
                semaphore.waiters.borrow_mut().push_back(waiter.clone());
                self.waiter = Some(waiter);
                Poll::Pending
            }
        }
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        if waiter.granted.get() {
            // Handed a permit it never took: pass it on.
            self.semaphore.release();
        } else {
            self.semaphore
                .waiters
                .borrow_mut()
                .retain(|queued| !Rc::ptr_eq(queued, &waiter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll<'a>(acquire: &mut Acquire<'a>) -> Poll<LocalPermit<'a>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(acquire).poll(&mut cx)
    }

    /// The permit `acquire` gets on this poll; panics, saying `why` it
    /// should have, if it has to wait.
    fn granted<'a>(acquire: &mut Acquire<'a>, why: &str) -> LocalPermit<'a> {
        match poll(acquire) {
            Poll::Ready(permit) => permit,
            Poll::Pending => panic!("no permit: {why}"),
        }
    }

    /// `semaphore`'s one permit held, and two waiters queued behind it.
    fn held_and_two_waiting(
        semaphore: &LocalSemaphore,
    ) -> (LocalPermit<'_>, Acquire<'_>, Acquire<'_>) {
        let held = granted(&mut semaphore.acquire(), "a free permit is taken at once");
        let mut first = semaphore.acquire();
        let mut second = semaphore.acquire();
        assert!(poll(&mut first).is_pending());
        assert!(poll(&mut second).is_pending());
        (held, first, second)
    }

    #[test]
    fn permits_are_capped_and_released_permits_go_to_waiters_in_order() {
        let semaphore = LocalSemaphore::new(1);
        let (first, mut second, mut third) = held_and_two_waiting(&semaphore);
        drop(first);
        // A newcomer does not overtake the waiters.
        assert!(poll(&mut semaphore.acquire()).is_pending());
        assert!(poll(&mut third).is_pending(), "the second waiter is first");
        drop(granted(
            &mut second,
            "the first waiter gets the released permit",
        ));
        assert!(poll(&mut third).is_ready());
    }

    #[test]
    fn a_permit_taken_at_once_never_overtakes_a_waiter_and_its_release_serves_them() {
        let semaphore = LocalSemaphore::new(1);
        assert!(semaphore.try_acquire(), "free");
        assert!(!semaphore.try_acquire(), "taken");
        let mut waiting = semaphore.acquire();
        assert!(poll(&mut waiting).is_pending());
        semaphore.release();
        assert!(
            !semaphore.try_acquire(),
            "handed to the waiter, not put back"
        );
        drop(granted(&mut waiting, "the waiter gets the released permit"));
        assert!(
            semaphore.try_acquire(),
            "free again once the waiter is done"
        );
        semaphore.release();
        assert_eq!(semaphore.available.get(), 1);
    }

    #[test]
    fn a_cancelled_waiter_loses_no_permit() {
        let semaphore = LocalSemaphore::new(1);
        let (held, handed, mut queued) = held_and_two_waiting(&semaphore);
        drop(held);
        // Handed the permit, then cancelled: it passes to the next waiter.
        drop(handed);
        drop(granted(&mut queued, "the permit was passed on"));
        // A waiter cancelled while still queued just leaves: the permit is
        // free again for anyone.
        let held = granted(&mut semaphore.acquire(), "the permit was put back");
        let mut leaving = semaphore.acquire();
        assert!(poll(&mut leaving).is_pending());
        drop(leaving);
        drop(held);
        assert!(poll(&mut semaphore.acquire()).is_ready());
        assert_eq!(semaphore.available.get(), 1);
    }
}
