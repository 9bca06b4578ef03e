//! The process's memory, as the pool's budget sees it.

/// 75 % of the machine's memory (`MemTotal`), or 4 GiB when it cannot be
/// read.
pub(crate) fn default_budget() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    total.map_or(4 << 30, |bytes| bytes / 4 * 3)
}

/// The process's resident set, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// Hands memory the allocator keeps after frees back to the system, so that
/// the resident figure the budget reads falls when isolates are dropped.
/// glibc keeps freed blocks in its arenas; elsewhere this does nothing.
pub(crate) fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free
    // memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
