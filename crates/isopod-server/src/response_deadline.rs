//! Response timeouts at a tenth of a second's precision, with no timer per
//! request.
//!
//! Every request waits for its instance's answer under the app's response
//! timeout. `tokio::time::timeout` would put a timer into the runtime's
//! wheel for each one: a large future moved with every request, a wheel
//! insertion, and a removal under the driver's lock when the answer comes
//! first, as it nearly always does. Here a request that has to wait writes
//! its deadline and waker into its thread's list (a slab slot), and one
//! sweep per thread, ten times a second, wakes those past their deadline.
//!
//! Invariants:
//! - A deadline fires between its instant and one [`SWEEP_EVERY`] later,
//!   never before it.
//! - A request registers only when its answer is not ready at the first
//!   poll, and leaves the list when it completes or is dropped.
//! - Everything here belongs to one worker thread (thread-locals): a
//!   request's entry lives on the thread its connection runs on.
//! - The sweep runs only while its thread has requests waiting, and stops
//!   at the first tick that finds none (so a thread serving one request at a
//!   time starts it at most once per tick, not once per request).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::periodic::{every_until_idle, Sweeper};

/// The sweep's period: a deadline's precision.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The deadline passed before the future finished.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// Runs `future` until `deadline` (see the module's invariants for the
/// precision).
pub(crate) fn within<F: Future>(deadline: Instant, future: F) -> Within<F> {
    Within {
        future,
        deadline,
        entry: None,
    }
}

pin_project_lite::pin_project! {
    /// The future [`within`] returns.
    pub(crate) struct Within<F> {
        #[pin]
        future: F,
        deadline: Instant,
        // The slot in the thread's list, once the future has had to wait.
        entry: Option<usize>,
    }

    impl<F> PinnedDrop for Within<F> {
        fn drop(this: Pin<&mut Self>) {
            leave(this.project().entry);
        }
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            leave(this.entry);
            return Poll::Ready(Ok(output));
        }
        match *this.entry {
            None => *this.entry = Some(register(*this.deadline, cx.waker())),
            Some(key) => {
                if SWEEP.with(|sweep| sweep.refresh(key, cx.waker())) {
                    leave(this.entry);
                    return Poll::Ready(Err(Elapsed));
                }
            }
        }
        Poll::Pending
    }
}

/// Takes a request's entry out of its thread's list, if it has one.
fn leave(entry: &mut Option<usize>) {
    if let Some(key) = entry.take() {
        // `try_with`: a request may be dropped as its thread exits.
        let _ = SWEEP.try_with(|sweep| sweep.entries.borrow_mut().try_remove(key));
    }
}

/// A waiting request, as its thread's sweep sees it.
struct Entry {
    deadline: Instant,
    waker: Waker,
    /// Set by the sweep when `deadline` has passed.
    expired: bool,
}

/// A worker thread's waiting requests.
struct Sweep {
    entries: RefCell<Slab<Entry>>,
    sweeper: Sweeper,
}

impl Sweep {
    /// Keeps the entry's waker current; returns whether it has expired.
    fn refresh(&self, key: usize, waker: &Waker) -> bool {
        let mut entries = self.entries.borrow_mut();
        let Some(entry) = entries.get_mut(key) else {
            return false;
        };
        if !entry.waker.will_wake(waker) {
            entry.waker.clone_from(waker);
        }
        entry.expired
    }
}

thread_local! {
    static SWEEP: Sweep = const {
        Sweep {
            entries: RefCell::new(Slab::new()),
            sweeper: Sweeper::new(),
        }
    };
}

fn register(deadline: Instant, waker: &Waker) -> usize {
    SWEEP.with(|sweep| {
        let key = sweep.entries.borrow_mut().insert(Entry {
            deadline,
            waker: waker.clone(),
            expired: false,
        });
        sweep.sweeper.ensure_running(run_sweep);
        key
    })
}

/// Every [`SWEEP_EVERY`]: wakes the requests whose deadline has passed.
/// Returns at the first tick that finds no request waiting (the next one
/// starts it again).
async fn run_sweep() {
    every_until_idle(SWEEP_EVERY, || {
        let now = Instant::now();
        SWEEP.with(|sweep| {
            let mut entries = sweep.entries.borrow_mut();
            for (_, entry) in entries.iter_mut() {
                if !entry.expired && entry.deadline <= now {
                    entry.expired = true;
                    entry.waker.wake_by_ref();
                }
            }
            sweep.sweeper.go_on(!entries.is_empty())
        })
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn on_a_local_set<T>(test: impl Future<Output = T>) -> T {
        tokio::task::LocalSet::new().run_until(test).await
    }

    #[tokio::test]
    async fn a_future_that_finishes_in_time_is_answered_and_leaves_the_list() {
        on_a_local_set(async {
            let deadline = Instant::now() + Duration::from_secs(5);
            let answer = within(deadline, async {
                tokio::task::yield_now().await;
                7
            })
            .await;
            assert_eq!(answer, Ok(7));
            assert!(SWEEP.with(|sweep| sweep.entries.borrow().is_empty()));
        })
        .await;
    }

    #[tokio::test]
    async fn a_deadline_fires_after_its_instant_and_within_a_sweep_of_it() {
        on_a_local_set(async {
            let start = Instant::now();
            let timeout = Duration::from_millis(250);
            let answer = within(start + timeout, std::future::pending::<()>()).await;
            let waited = start.elapsed();
            assert_eq!(answer, Err(Elapsed));
            assert!(waited >= timeout, "fired early, after {waited:?}");
            // One sweep late at most, plus scheduling slack on a busy machine.
            assert!(
                waited < timeout + SWEEP_EVERY * 3,
                "fired late, after {waited:?}"
            );
            assert!(SWEEP.with(|sweep| sweep.entries.borrow().is_empty()));
        })
        .await;
    }

    #[tokio::test]
    async fn a_dropped_request_leaves_the_list_and_the_sweep_stops() {
        on_a_local_set(async {
            let waiting = within(
                Instant::now() + Duration::from_secs(60),
                std::future::pending::<()>(),
            );
            let mut waiting = Box::pin(waiting);
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            assert_eq!(SWEEP.with(|sweep| sweep.entries.borrow().len()), 1);
            assert!(SWEEP.with(|sweep| sweep.sweeper.is_running()));
            drop(waiting);
            assert!(SWEEP.with(|sweep| sweep.entries.borrow().is_empty()));
            // The sweep notices at its next tick that nothing waits.
            tokio::time::sleep(SWEEP_EVERY * 3).await;
            assert!(!SWEEP.with(|sweep| sweep.sweeper.is_running()));
        })
        .await;
    }
}
