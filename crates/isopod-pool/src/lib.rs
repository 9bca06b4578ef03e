//! isopod's instance pool.
//!
//! [`Pool`] runs M worker threads, each a `current_thread` tokio runtime with
//! a `LocalSet`, each holding the instances of the apps whose home thread it
//! is: one pooled instance per app version, created on the first request,
//! kept warm, evicted least-recently-used when the global cap
//! (`max_instances`) is reached, and retired when a newer version of its app
//! is deployed. Apps in [`ExecutionMode::IsolatePerRequest`] get a fresh
//! instance per request instead. One more thread, the quarantine thread,
//! serves the versions a limit has recently killed, away from the worker
//! threads' connections.
//!
//! Invariants:
//! - Instances never cross threads; only requests, responses and handles do.
//! - An instance with requests in flight is never destroyed: eviction and
//!   retirement drop its handle, and the instance finishes what it is doing
//!   (streaming responses and `waitUntil` work included) before it goes.
//! - A burst of requests for a cold version creates one instance; the others
//!   wait for it rather than each creating their own.
//! - Live instances (per-request ones included) never exceed the cap; a miss
//!   when every instance is busy is refused with [`PoolError::AtCapacity`].
//! - Once a limit kills an instance of a version, its new requests go only
//!   to the quarantine thread until the quarantine ends (10 s after its
//!   last kill).

mod local;
mod memory;
mod permits;
mod pool;
mod stats;
mod version;

pub use memory::resident_bytes;
pub use pool::{Pool, PoolConfig, PoolThread, ThreadMain, ThreadTask};
pub use stats::{AppKills, InstanceRow, PoolStats};
pub use version::{AppVersion, ExecutionMode, VersionId};

/// Why the pool could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The version's instance could not be created (a broken bundle).
    #[error(transparent)]
    Instance(#[from] isopod_runtime::InstanceError),
    /// The instance took the request but produced no response.
    #[error(transparent)]
    Dispatch(#[from] isopod_runtime::DispatchError),
    /// Every instance is busy and the cap allows no new one.
    #[error("the pool is at its instance cap and every instance is busy")]
    AtCapacity,
    /// The process is over its memory budget and the thread has no idle
    /// instance left to evict; no instance is created.
    #[error("the process is over its memory budget and no idle instance is left to evict")]
    OverMemoryBudget,
    /// The pool has shut down.
    #[error("the pool has shut down")]
    ShutDown,
    /// A worker thread could not be started.
    #[error("cannot start a worker thread: {0}")]
    Thread(std::io::Error),
}

#[cfg(test)]
mod tests;
