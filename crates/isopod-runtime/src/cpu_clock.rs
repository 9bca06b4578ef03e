//! Thread CPU clocks: what every CPU limit is measured with.
//!
//! A thread's CPU clock advances only while that thread runs, so time spent
//! waiting (for I/O, for a lock, for the scheduler) is never charged. A
//! clock id may be read from any thread; reading the clock of a thread that
//! has exited fails, and reads as zero.
//!
//! Reading the CPU clock is a system call (0.6–0.7 µs on the machines
//! isopod was measured on, 4–6 % of a hello-world request; the monotonic
//! clock, read in user space, costs about 30 ns), so windows avoid it:
//! - A window's entry takes the thread's last real reading as its base when
//!   that reading is at most [`REUSE_WITHIN`] of wall time old. The base is
//!   then low by whatever the thread ran since (at most that long): a window
//!   that reads the clock at its exit is charged that gap too, and its
//!   watchdog deadline comes that much early. Never a charge below the
//!   window's own CPU.
//! - A window that lasted at most [`SHORT_WINDOW`] of wall time is charged
//!   its wall time, which bounds its CPU time from above (a thread's CPU
//!   clock never runs faster than wall time), with no reading: the error is
//!   only an over-charge, by what the thread was preempted inside it. A
//!   longer window reads the clock at its exit and is charged what it read.
//!
//! Most windows are short and come back to back, so a thread reads its clock
//! about once per [`REUSE_WITHIN`] of work rather than once per window.
//! Every read is counted ([`cpu_clock_reads`]) so the cost per request can
//! be measured rather than estimated.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old the thread's last real CPU reading may be to serve as a
/// window's base, in nanoseconds of wall time.
const REUSE_WITHIN_NS: u64 = 1_000_000;

/// Windows up to this long (wall time, in nanoseconds) are charged their
/// wall time.
const SHORT_WINDOW_NS: u64 = 200_000;

/// The calling thread's CPU time: a fresh reading.
pub fn thread_cpu_time() -> Duration {
    count_read();
    read(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Where a window started: the CPU base it is measured from, and when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowStart {
    /// The thread's CPU time at entry, or a lower bound of it (a reused
    /// reading).
    pub(crate) cpu: Duration,
    /// When, as `isopod_api::monotonic_ns`.
    wall_ns: u64,
}

impl WindowStart {
    /// A start for a window that has not opened (charged nothing).
    pub(crate) fn never() -> WindowStart {
        WindowStart {
            cpu: Duration::ZERO,
            wall_ns: isopod_api::monotonic_ns(Instant::now()),
        }
    }
}

/// The start of a window entered at `wall_ns` (as
/// `isopod_api::monotonic_ns`): the thread's last real reading if it is
/// fresh enough, else a new one.
pub(crate) fn window_start(wall_ns: u64) -> WindowStart {
    if let Some((taken_ns, cpu)) = LAST_READING.get() {
        if wall_ns.saturating_sub(taken_ns) <= REUSE_WITHIN_NS {
            return WindowStart { cpu, wall_ns };
        }
    }
    let cpu = thread_cpu_time();
    LAST_READING.set(Some((wall_ns, cpu)));
    WindowStart { cpu, wall_ns }
}

/// What the window that began at `start` is charged at its exit, `now_ns`
/// (as `isopod_api::monotonic_ns`): its wall time if it was short, else the
/// CPU the clock says since `start` (a real reading, remembered for the
/// windows after it).
pub(crate) fn window_spent(start: WindowStart, now_ns: u64) -> Duration {
    let wall_ns = now_ns.saturating_sub(start.wall_ns);
    if wall_ns <= SHORT_WINDOW_NS {
        return Duration::from_nanos(wall_ns);
    }
    let cpu = thread_cpu_time();
    LAST_READING.set(Some((now_ns, cpu)));
    cpu.saturating_sub(start.cpu)
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
    /// The thread's last real reading, with when it was taken.
    static LAST_READING: Cell<Option<(u64, Duration)>> = const { Cell::new(None) };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        isopod_api::monotonic_ns(Instant::now())
    }

    fn reads_here() -> u64 {
        READS.with(|reads| reads.load(Ordering::Relaxed))
    }

    fn spin(for_cpu: Duration) {
        let start = read(libc::CLOCK_THREAD_CPUTIME_ID);
        while read(libc::CLOCK_THREAD_CPUTIME_ID) - start < for_cpu {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn short_windows_are_charged_wall_time_and_read_no_clock() {
        // A window preempted past SHORT_WINDOW (a busy test machine) reads
        // at its exit, rightly: most of a hundred must not.
        let mut reading_exits = 0;
        for _ in 0..100 {
            let start = window_start(isopod_api::monotonic_ns(Instant::now()));
            let reads = reads_here();
            let spent = window_spent(start, now());
            if reads_here() != reads {
                reading_exits += 1;
            } else {
                assert!(spent <= Duration::from_nanos(SHORT_WINDOW_NS), "{spent:?}");
            }
        }
        assert!(
            reading_exits <= 10,
            "{reading_exits} of 100 short windows read the clock"
        );
    }

    #[test]
    fn long_windows_are_charged_their_cpu_not_their_wall_time() {
        // Busy: charged at least its CPU.
        let start = window_start(isopod_api::monotonic_ns(Instant::now()));
        spin(Duration::from_millis(3));
        let busy = window_spent(start, now());
        assert!(busy >= Duration::from_millis(3), "{busy:?}");
        // Idle (blocked): charged its CPU (the gap before it at most), not
        // its 20 ms of wall time.
        let start = window_start(isopod_api::monotonic_ns(Instant::now()));
        std::thread::sleep(Duration::from_millis(20));
        let idle = window_spent(start, now());
        assert!(
            idle < Duration::from_nanos(REUSE_WITHIN_NS) + Duration::from_millis(2),
            "{idle:?}"
        );
    }
}
