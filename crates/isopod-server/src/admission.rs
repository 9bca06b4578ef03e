//! Per-app admission: at most `max_concurrent_requests` requests of one app
//! are served at once across the process; as many more may wait for a turn;
//! past that, or after waiting as long as the response timeout, a request
//! is answered 503 without reaching an instance.
//!
//! Invariant: a permit is held for the whole dispatch (until the response
//! headers), so a slow app cannot take more than its share of the pool's
//! instances' concurrency, whatever its clients do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// One app version's admission control.
#[derive(Debug)]
pub struct Admission {
    permits: Semaphore,
    limit: usize,
    waiting: AtomicUsize,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue was full.
    QueueFull,
    /// No turn came within the wait bound.
    Timeout,
}

impl Admission {
    /// Admits `limit` requests at once and queues as many more.
    pub fn new(limit: usize) -> Admission {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            permits: Semaphore::new(limit),
            limit,
            waiting: AtomicUsize::new(0),
        }
    }

    /// The concurrency cap.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many requests wait for a turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// A turn at once, if one is free: the common case, with no future to
    /// carry (then [`Admission::admit`] waits for one).
    pub(crate) fn try_admit(&self) -> Option<SemaphorePermit<'_>> {
        self.permits.try_acquire().ok()
    }

    /// Waits for a turn, for at most `wait`: the path after
    /// [`Admission::try_admit`] found none free.
    pub(crate) async fn admit(&self, wait: Duration) -> Result<SemaphorePermit<'_>, Refused> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::QueueFull);
        }
        let turn = tokio::time::timeout(wait, self.permits.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match turn {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refused::Timeout),
        }
    }
}
