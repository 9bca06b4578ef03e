//! Per-request allocations reused on their thread, as hyper reuses a
//! connection's header map and read buffer: response header maps (an empty
//! `HeaderMap` costs two allocations at its first insert and two frees when
//! dropped), and the byte buffers of a request's URL and header lines. For
//! a small handler these allocations were a noticeable share of the whole
//! request.
//!
//! Invariants: whatever is handed out is empty (cleared, its capacity
//! kept); nothing grown past its `KEEP_*` size is kept, nor more than
//! [`KEEP_EACH`] of a kind per thread, so the caches stay small (tens of
//! KiB) whatever the requests were. Everything here is per thread:
//! something taken on one thread and given back on another just moves.

use std::cell::RefCell;
use std::thread::LocalKey;

use http::HeaderMap;

/// Header maps with room for more entries than this are dropped.
const KEEP_MAP_CAPACITY: usize = 32;

/// Byte buffers larger than this are dropped.
const KEEP_BUFFER_BYTES: usize = 4096;

/// How many maps, and how many buffers, a thread keeps.
const KEEP_EACH: usize = 64;

thread_local! {
    static SPARE_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static SPARE_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty map for a response's headers: one this thread recycled, if any.
pub(crate) fn header_map() -> HeaderMap {
    take(&SPARE_MAPS).unwrap_or_default()
}

/// Gives a response's header map back for reuse once it has been written
/// out. Its entries are dropped here.
pub fn recycle_header_map(mut map: HeaderMap) {
    if map.capacity() <= KEEP_MAP_CAPACITY {
        map.clear();
        keep(&SPARE_MAPS, map);
    }
}

/// An empty byte buffer with room for at least `capacity` bytes, for a
/// request's URL or header lines: one this thread recycled, if any.
pub fn buffer(capacity: usize) -> Vec<u8> {
    let mut buffer = take(&SPARE_BUFFERS).unwrap_or_default();
    buffer.reserve(capacity);
    buffer
}

/// Gives a request's buffer back for reuse once the instance is done with
/// it.
pub(crate) fn recycle_buffer(mut buffer: Vec<u8>) {
    if (1..=KEEP_BUFFER_BYTES).contains(&buffer.capacity()) {
        buffer.clear();
        keep(&SPARE_BUFFERS, buffer);
    }
}

/// One of the thread's spares, if it has any (none while it exits).
fn take<T: 'static>(spares: &'static LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    spares
        .try_with(|spares| spares.borrow_mut().pop())
        .ok()
        .flatten()
}

/// Keeps `item` (already emptied) among the thread's spares, unless it has
/// [`KEEP_EACH`] of them.
fn keep<T: 'static>(spares: &'static LocalKey<RefCell<Vec<T>>>, item: T) {
    let _ = spares.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < KEEP_EACH {
            spares.push(item);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_map_comes_back_empty_with_its_capacity() {
        let mut map = header_map();
        map.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let capacity = map.capacity();
        assert!(capacity > 0);
        recycle_header_map(map);
        let again = header_map();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity, "the same allocation");
        let mut big = HeaderMap::with_capacity(KEEP_MAP_CAPACITY * 4);
        big.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        recycle_header_map(big);
        assert_eq!(header_map().capacity(), 0, "a big map is not kept");
    }

    #[test]
    fn a_recycled_buffer_comes_back_empty_and_a_big_one_is_dropped() {
        let mut first = buffer(10);
        first.extend_from_slice(b"http://example.com/");
        let address = first.as_ptr();
        recycle_buffer(first);
        let again = buffer(5);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), address, "the same allocation");
        recycle_buffer(vec![0; KEEP_BUFFER_BYTES + 1]);
        let fresh = buffer(1);
        assert!(fresh.capacity() <= KEEP_BUFFER_BYTES);
    }
}
