//! Response header maps, reused on their thread, as hyper reuses a
//! connection's: an empty `HeaderMap` costs two allocations at its first
//! insert and two frees when dropped, which for a small handler's response
//! is a noticeable share of the whole request.
//!
//! Invariants: a recycled map is empty (cleared, its capacity kept); a map
//! grown past [`KEEP_CAPACITY`] is not kept, nor more than [`KEEP_MAPS`]
//! per thread, so the cache stays a few KiB whatever the responses were.

use std::cell::RefCell;

use http::HeaderMap;

/// Maps larger than this many entries are dropped rather than kept.
const KEEP_CAPACITY: usize = 32;

/// How many maps a thread keeps.
const KEEP_MAPS: usize = 64;

thread_local! {
    static SPARE_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map for a response's headers: one this thread recycled, if any.
pub(crate) fn take() -> HeaderMap {
    SPARE_MAPS
        .try_with(|maps| maps.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Gives a response's header map back for reuse once it has been written
/// out. Its entries are dropped here.
pub fn recycle_header_map(mut map: HeaderMap) {
    if map.capacity() > KEEP_CAPACITY {
        return;
    }
    map.clear();
    let _ = SPARE_MAPS.try_with(|maps| {
        let mut maps = maps.borrow_mut();
        if maps.len() < KEEP_MAPS {
            maps.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_map_comes_back_empty_with_its_capacity() {
        let mut map = take();
        map.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let capacity = map.capacity();
        assert!(capacity > 0);
        recycle_header_map(map);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity, "the same allocation");
        let mut big = HeaderMap::with_capacity(KEEP_CAPACITY * 4);
        big.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        recycle_header_map(big);
        assert_eq!(take().capacity(), 0, "a big map is not kept");
    }
}
