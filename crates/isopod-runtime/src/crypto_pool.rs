//! Each instance's own thread for WebCrypto's blocking work.
//!
//! deno_crypto runs most `crypto.subtle` operations (digests, signatures,
//! key derivation, key generation) with `spawn_blocking`, on a thread other
//! than the isolate's, where the CPU clock the enforcer reads at every
//! window does not see them. Left on tokio's shared blocking pool, a tenant
//! could burn hundreds of threads' worth of CPU without its requests being
//! charged a microsecond. So each instance has a pool of its own, of one
//! thread:
//! - it is bounded: an instance runs one crypto operation at a time and the
//!   rest queue behind it; the thread exists only while there is work (and
//!   a short keep-alive after), so the process has at most one crypto
//!   thread per live instance;
//! - its CPU is exact: the thread works for this instance alone, so its CPU
//!   clock is this instance's crypto CPU, which the limit enforcer charges
//!   back to the requests in flight at the next event-loop window
//!   (`enforcer.rs`).
//!
//! How the work gets here: the bootstrap calls every `SubtleCrypto` method
//! with this pool's runtime as the current tokio context
//! (`isopod_api`'s `op_isopod_in_crypto_pool`). deno polls an async op
//! once when it is called, and each crypto op calls `spawn_blocking`
//! before its first `await`, so the blocking task is spawned onto the
//! runtime current at that moment: this one. Nothing ever drives the
//! runtime's scheduler; only its blocking pool is used.
//!
//! Invariants: the runtime is made on first use (an app that never uses
//! `crypto.subtle` costs nothing); dropping the pool never waits for an
//! operation in progress (it finishes on its thread, which then exits, and
//! its result is dropped); the CPU of every thread the pool ever had is
//! counted, including threads that have exited.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

use crate::cpu_clock;

/// How long the pool's thread waits for more work before it exits.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// One instance's crypto thread, and what it has cost.
#[derive(Default)]
pub(crate) struct CryptoPool {
    runtime: RefCell<Option<Runtime>>,
    meter: Arc<ThreadMeter>,
    /// The meter's total when the enforcer last took what was new.
    charged: Cell<Duration>,
}

impl CryptoPool {
    /// The runtime whose blocking pool crypto operations are spawned onto;
    /// made on first use.
    pub(crate) fn handle(&self) -> std::io::Result<Handle> {
        let mut runtime = self.runtime.borrow_mut();
        if let Some(runtime) = runtime.as_ref() {
            return Ok(runtime.handle().clone());
        }
        let started = self.meter.clone();
        let stopped = self.meter.clone();
        let built = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .thread_keep_alive(KEEP_ALIVE)
            .thread_name("isopod-crypto")
            .on_thread_start(move || started.thread_started())
            .on_thread_stop(move || stopped.thread_stopped())
            .build()?;
        let handle = built.handle().clone();
        *runtime = Some(built);
        Ok(handle)
    }

    /// CPU the pool's threads have spent since the last call. Costs one
    /// atomic load until the pool has had a thread.
    pub(crate) fn take_uncharged(&self) -> Duration {
        if !self.meter.used.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let total = self.meter.total();
        let new = total.saturating_sub(self.charged.get());
        self.charged.set(total.max(self.charged.get()));
        new
    }

    /// CPU the pool's threads have spent in all.
    pub(crate) fn total(&self) -> Duration {
        if !self.meter.used.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        self.meter.total()
    }
}

impl Drop for CryptoPool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.get_mut().take() {
            // Does not wait: an operation in progress finishes on its own
            // thread, and nobody is left to take its result.
            runtime.shutdown_background();
        }
    }
}

/// The CPU clocks of a pool's threads, shared with the threads themselves
/// (which register on start and hand in their final reading on stop).
#[derive(Default)]
struct ThreadMeter {
    /// Set once the pool has had a thread: until then there is nothing to
    /// read.
    used: AtomicBool,
    threads: Mutex<Threads>,
}

#[derive(Default)]
struct Threads {
    /// CPU of the threads that have exited.
    finished: Duration,
    /// The threads alive now and their clocks. One at a time in steady
    /// state; briefly two when a thread is retiring as the next starts.
    live: Vec<(ThreadId, libc::clockid_t)>,
}

impl ThreadMeter {
    /// Runs on the new thread.
    fn thread_started(&self) {
        crate::scheduling::lower_thread_priority();
        if let Ok(mut threads) = self.threads.lock() {
            threads.live.push((
                std::thread::current().id(),
                cpu_clock::current_thread_clock(),
            ));
        }
        self.used.store(true, Ordering::Release);
    }

    /// Runs on the thread, as it exits.
    fn thread_stopped(&self) {
        let id = std::thread::current().id();
        let spent = cpu_clock::thread_cpu_time();
        if let Ok(mut threads) = self.threads.lock() {
            threads.finished += spent;
            threads.live.retain(|(thread, _)| *thread != id);
        }
    }

    fn total(&self) -> Duration {
        let Ok(threads) = self.threads.lock() else {
            return Duration::ZERO;
        };
        threads.finished
            + threads
                .live
                .iter()
                .map(|(_, clock)| cpu_clock::read(*clock))
                .sum::<Duration>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(for_cpu: Duration) {
        let start = cpu_clock::thread_cpu_time();
        while cpu_clock::thread_cpu_time() - start < for_cpu {
            std::hint::black_box(0u64);
        }
    }

    #[tokio::test]
    async fn work_spawned_inside_the_pool_is_measured_there_and_taken_once() {
        let pool = CryptoPool::default();
        assert_eq!(pool.take_uncharged(), Duration::ZERO);
        let handle = pool.handle().expect("the pool's runtime builds");
        let on_pool = {
            let _entered = handle.enter();
            tokio::task::spawn_blocking(|| spin(Duration::from_millis(30)))
        };
        on_pool.await.expect("the work runs");
        // Work on the ambient runtime's pool is not this pool's.
        tokio::task::spawn_blocking(|| spin(Duration::from_millis(100)))
            .await
            .expect("the work runs");
        let charged = pool.take_uncharged();
        assert!(
            charged >= Duration::from_millis(30) && charged < Duration::from_millis(100),
            "charged {charged:?}"
        );
        assert_eq!(pool.take_uncharged(), Duration::ZERO);
        assert!(pool.total() >= charged);
    }

    #[tokio::test]
    async fn dropping_the_pool_does_not_wait_for_work_in_progress() {
        let pool = CryptoPool::default();
        let handle = pool.handle().expect("the pool's runtime builds");
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let work = {
            let _entered = handle.enter();
            tokio::task::spawn_blocking(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
        };
        started_rx.recv().expect("the work starts");
        drop(pool);
        // Had the drop waited, it would never have returned: the work waits
        // for this.
        let _ = release_tx.send(());
        work.await.expect("the work finishes on its thread");
    }
}
