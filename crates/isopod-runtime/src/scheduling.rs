//! Thread priorities: which of isopod's threads the OS should prefer when
//! cores are short.
//!
//! Threads that accept connections and run well-behaved apps run at the
//! process's own priority. Threads that run work isopod already knows to be
//! heavy or hostile (WebCrypto jobs, apps whose instances were just killed
//! by a limit) run at a lower one, so when they compete with the serving
//! threads for a core, the scheduler gives them about a tenth of a busy
//! serving thread's share and wakes a serving thread ahead of them.

/// The niceness of background threads (0 is the process's own; 19 the
/// lowest priority).
const BACKGROUND_NICENESS: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority to the background one.
/// Linux applies `setpriority` to the one thread whose id it is given.
/// Best effort: on failure the thread keeps the process's priority.
pub fn lower_thread_priority() {
    // SAFETY: `gettid` has no preconditions.
    let thread = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
    // SAFETY: a plain system call on this thread's id; no memory is passed.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, BACKGROUND_NICENESS) };
}
