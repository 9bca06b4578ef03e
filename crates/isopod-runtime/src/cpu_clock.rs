//! Thread CPU clocks: what every CPU limit is measured with.
//!
//! A thread's CPU clock advances only while that thread runs, so time spent
//! waiting (for I/O, for a lock, for the scheduler) is never charged. A
//! clock id may be read from any thread; reading the clock of a thread that
//! has exited fails, and reads as zero.
//!
//! Reading the CPU clock is a system call (about 0.6 µs on the machines
//! isopod was measured on; the monotonic clock, read in user space, costs
//! about 30 ns), and every window is bracketed by a reading at entry and one
//! at exit. Windows come back to back (a batch of dispatches, then the event
//! loop), so a window's entry takes the thread's last reading instead of a
//! new one when that reading is at most [`REUSE_WITHIN`] of wall time old:
//! the window is then charged for the gap as well (at most that long, since
//! CPU time never runs faster than wall time), never for less than it used.
//! Every read is counted ([`cpu_clock_reads`]) so the cost per request can
//! be measured rather than estimated.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old the thread's last CPU reading may be to serve as a window's
/// entry reading.
const REUSE_WITHIN: Duration = Duration::from_micros(20);

/// The calling thread's CPU time: a fresh reading.
pub fn thread_cpu_time() -> Duration {
    count_read();
    read(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The CPU reading a window's entry is measured from: the thread's last
/// window-exit reading if it is fresh enough, else a new one.
pub(crate) fn entry_reading() -> Duration {
    let now = Instant::now();
    if let Some((taken_at, cpu)) = LAST_READING.get() {
        if now.saturating_duration_since(taken_at) <= REUSE_WITHIN {
            return cpu;
        }
    }
    let cpu = thread_cpu_time();
    LAST_READING.set(Some((now, cpu)));
    cpu
}

/// A fresh reading at a window's exit, remembered for the next entry.
pub(crate) fn exit_reading() -> Duration {
    let cpu = thread_cpu_time();
    LAST_READING.set(Some((Instant::now(), cpu)));
    cpu
}

/// How many fresh CPU-clock readings ([`thread_cpu_time`]) any thread has
/// taken since the process started: the limit enforcer's, the watchdog
/// interrupts', and one per exiting crypto thread.
pub fn cpu_clock_reads() -> u64 {
    READ_COUNTERS.lock().map_or(0, |counters| {
        counters.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    })
}

/// What one CPU-clock read costs on this machine, measured (once, on
/// first call) over a few thousand reads.
pub fn cpu_clock_read_cost() -> Duration {
    static COST: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *COST.get_or_init(|| {
        const READS: u32 = 4000;
        let start = Instant::now();
        for _ in 0..READS {
            std::hint::black_box(read(libc::CLOCK_THREAD_CPUTIME_ID));
        }
        start.elapsed() / READS
    })
}

thread_local! {
    /// The thread's last exit (or fresh entry) reading, with when it was
    /// taken.
    static LAST_READING: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
    /// This thread's read count; only this thread writes it.
    static READS: Arc<AtomicU64> = {
        let counter = Arc::new(AtomicU64::new(0));
        if let Ok(mut counters) = READ_COUNTERS.lock() {
            counters.push(counter.clone());
        }
        counter
    };
}

/// Every thread's read counter (a thread's count outlives it).
static READ_COUNTERS: Mutex<Vec<Arc<AtomicU64>>> = Mutex::new(Vec::new());

fn count_read() {
    READS.with(|reads| reads.store(reads.load(Ordering::Relaxed) + 1, Ordering::Relaxed));
}

/// The calling thread's CPU clock id, readable from other threads.
pub(crate) fn current_thread_clock() -> libc::clockid_t {
    let mut clock: libc::clockid_t = libc::CLOCK_THREAD_CPUTIME_ID;
    // SAFETY: `pthread_self` is always valid for the calling thread and
    // `clock` is a valid out-pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if rc != 0 {
        // Falls back to the process clock: coarser (all threads' CPU), but
        // never slower than the thread's, so no deadline is missed.
        return libc::CLOCK_PROCESS_CPUTIME_ID;
    }
    clock
}

/// Reads a clock from [`current_thread_clock`] (or any clock id).
pub(crate) fn read(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; a clock of a thread that
    // has exited makes the call fail, which reads as "no CPU used".
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
