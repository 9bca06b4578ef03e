//! Wall-clock time for expirations, replaceable by a settable clock in
//! tests so expiry is tested without sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::store::now_ms;

/// Where "now" comes from. Cheap to clone; clones of a manual clock share
/// one time, so a test moving it moves it for every handle built on it.
#[derive(Clone)]
pub struct Clock(Source);

#[derive(Clone)]
enum Source {
    System,
    /// Milliseconds since the Unix epoch.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that stands still at `start_ms` (milliseconds since the Unix
    /// epoch) until [`Clock::set_ms`] or [`Clock::advance`] moves it.
    pub fn manual(start_ms: u64) -> Clock {
        Clock(Source::Manual(Arc::new(AtomicU64::new(start_ms))))
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Source::System => now_ms(),
            Source::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Now, in whole seconds since the Unix epoch (KV's unit).
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// Sets a manual clock to `ms`; the system clock ignores it.
    pub fn set_ms(&self, ms: u64) {
        if let Source::Manual(now) = &self.0 {
            now.store(ms, Ordering::SeqCst);
        }
    }

    /// Moves a manual clock forward by `by`; the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(now) = &self.0 {
            let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            now.fetch_add(by, Ordering::SeqCst);
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::System => f.write_str("Clock::system()"),
            Source::Manual(ms) => write!(f, "Clock::manual({})", ms.load(Ordering::SeqCst)),
        }
    }
}
