//! The per-thread sweeps' shared machinery (`head_deadline`,
//! `response_deadline`): a task that runs a round every period while its
//! thread has something to watch, and is started again by the next thing.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

/// Whether a thread's sweep task is running. Lives in the sweep's
/// thread-local state.
pub(crate) struct Sweeper {
    running: Cell<bool>,
}

impl Sweeper {
    /// A sweeper whose task has not started.
    pub(crate) const fn new() -> Sweeper {
        Sweeper {
            running: Cell::new(false),
        }
    }

    /// Spawns the sweep task `run` makes on this thread, unless it runs
    /// already; returns whether it spawned it. Called whenever something
    /// starts being watched.
    pub(crate) fn ensure_running<F: Future<Output = ()> + 'static>(
        &self,
        run: impl FnOnce() -> F,
    ) -> bool {
        let start = !self.running.replace(true);
        if start {
            tokio::task::spawn_local(run());
        }
        start
    }

    /// Whether the task runs (for tests).
    #[cfg(test)]
    pub(crate) fn is_running(&self) -> bool {
        self.running.get()
    }

    /// Ends a round: whether the task goes on, which it does while
    /// anything is left to watch; otherwise it counts as stopped from now.
    pub(crate) fn go_on(&self, anything_left: bool) -> bool {
        if !anything_left {
            self.running.set(false);
        }
        anything_left
    }
}

/// Runs `round` once every `period`, the first time one period from now,
/// until a round returns false (see [`Sweeper::go_on`]).
///
/// A round that comes late (the thread was busy) runs once, and the next
/// comes a full period after it: a sweep never runs twice back to back to
/// catch up.
pub(crate) async fn every_until_idle(period: Duration, mut round: impl FnMut() -> bool) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval's first tick is immediate.
    every.tick().await;
    loop {
        every.tick().await;
        if !round() {
            return;
        }
    }
}
