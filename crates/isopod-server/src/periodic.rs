//! The loop both per-thread sweeps run (`head_deadline`, `response_deadline`).

use std::time::Duration;

/// Runs `round` once every `period`, the first time one period from now,
/// until a round returns false (nothing left to watch).
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
