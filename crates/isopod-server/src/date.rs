//! The `date` every response head carries, as hyper writes it: formatted
//! once a second per thread rather than for every response. The thread's
//! head-deadline sweep refreshes it (it runs whenever the thread has a
//! connection); isopod's own HTTP/1.1 path reads it (`h1::response_head`).

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `date` value, formatted once a second per thread (by the head
/// deadline's sweep, see [`refresh_date`]) rather than for every response.
struct CachedDate {
    second: u64,
    value: [u8; 29],
}

/// Sets the thread's `date` value to now. Called by the thread's head
/// deadline sweep when it starts (a connection is accepted while it is
/// stopped) and once a second while it runs, so the date lags the clock
/// by at most about a second; the sweep runs whenever the thread has a
/// connection to answer on.
pub(crate) fn refresh_date() {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let _ = DATE.try_with(|date| {
        let mut date = date.borrow_mut();
        if second == date.second {
            return;
        }
        let formatted = httpdate::fmt_http_date(now);
        // An IMF-fixdate is always 29 bytes.
        if formatted.len() == date.value.len() {
            date.value.copy_from_slice(formatted.as_bytes());
            date.second = second;
        }
    });
}

thread_local! {
    static DATE: RefCell<CachedDate> = const {
        RefCell::new(CachedDate {
            second: u64::MAX,
            value: *b"Thu, 01 Jan 1970 00:00:00 GMT",
        })
    };
}

/// Calls `write` with the thread's current `date` value (29 bytes).
pub(crate) fn with_date<R>(write: impl FnOnce(&[u8]) -> R) -> R {
    DATE.with(|date| write(&date.borrow().value))
}
