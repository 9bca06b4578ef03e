//! A bundle's source as V8 holds it: one copy per version, shared by every
//! isolate, instead of one in each isolate's heap.
//!
//! V8 keeps a script's source for as long as the script lives (lazy
//! compilation and `Function.prototype.toString` read it), so a bundle's
//! source was a per-instance cost: a 900 KiB bundle with one non-ASCII
//! character in a comment is a 1.8 MiB two-byte string in every isolate.
//! Here it is an external string whose characters live outside the heap,
//! in memory counted by reference: V8 holds a reference for each string it
//! made and gives it back when it collects the string or disposes of the
//! isolate.
//!
//! Invariants: the characters are never written after the first string is
//! made; each string made holds one strong count of its `Arc`, released by
//! V8's finalizer with the same pointer and length it was given.

use std::sync::Arc;

use deno_core::v8;

/// A bundle's source in the form V8 stores it: one byte a character when
/// every character fits (for ASCII, the bundle's own UTF-8 text, not a
/// copy), UTF-16 otherwise.
#[derive(Debug)]
pub(crate) enum SharedSource {
    /// ASCII: the bundle's text itself.
    Ascii(Arc<str>),
    /// Every character is below U+0100, some above U+007F: Latin-1.
    Latin1(Arc<[u8]>),
    /// At least one character is U+0100 or above: UTF-16.
    TwoByte(Arc<[u16]>),
}

impl SharedSource {
    pub(crate) fn new(source: &Arc<str>) -> SharedSource {
        if source.is_ascii() {
            return SharedSource::Ascii(source.clone());
        }
        if source.chars().all(|c| (c as u32) < 0x100) {
            return SharedSource::Latin1(source.chars().map(|c| c as u8).collect());
        }
        SharedSource::TwoByte(source.encode_utf16().collect())
    }

    /// A V8 string of the source whose characters are these, not a copy;
    /// `None` past V8's string length limit.
    pub(crate) fn v8_string<'s>(
        &self,
        scope: &v8::PinScope<'s, '_>,
    ) -> Option<v8::Local<'s, v8::String>> {
        match self {
            // V8 may decline to make an empty string external (and so never
            // finalize it): an empty source is the empty string.
            SharedSource::Ascii(text) if text.is_empty() => Some(v8::String::empty(scope)),
            SharedSource::Ascii(text) => {
                let held = Arc::into_raw(text.clone());
                // SAFETY: `held` is one strong count of an `Arc<str>` whose
                // bytes (ASCII, so Latin-1) are never written again; V8
                // calls `release_ascii` with this pointer and length exactly
                // once, when it collects the string or disposes of the
                // isolate, and that gives the count back.
                let made = unsafe {
                    v8::String::new_external_onebyte_raw(
                        scope,
                        held as *mut u8 as *mut std::ffi::c_char,
                        text.len(),
                        release_ascii,
                    )
                };
                if made.is_none() {
                    // SAFETY: V8 did not take it: the count is still ours.
                    unsafe { drop(Arc::from_raw(held)) };
                }
                made
            }
            SharedSource::Latin1(bytes) if bytes.is_empty() => Some(v8::String::empty(scope)),
            SharedSource::Latin1(bytes) => {
                let held = Arc::into_raw(bytes.clone());
                // SAFETY: as above, for an `Arc<[u8]>` and `release_latin1`.
                let made = unsafe {
                    v8::String::new_external_onebyte_raw(
                        scope,
                        held as *mut u8 as *mut std::ffi::c_char,
                        bytes.len(),
                        release_latin1,
                    )
                };
                if made.is_none() {
                    // SAFETY: V8 did not take it: the count is still ours.
                    unsafe { drop(Arc::from_raw(held)) };
                }
                made
            }
            SharedSource::TwoByte(units) if units.is_empty() => Some(v8::String::empty(scope)),
            SharedSource::TwoByte(units) => {
                let held = Arc::into_raw(units.clone());
                // SAFETY: as above, for an `Arc<[u16]>` and
                // `release_two_byte`.
                let made = unsafe {
                    v8::String::new_external_twobyte_raw(
                        scope,
                        held as *mut u16,
                        units.len(),
                        release_two_byte,
                    )
                };
                if made.is_none() {
                    // SAFETY: V8 did not take it: the count is still ours.
                    unsafe { drop(Arc::from_raw(held)) };
                }
                made
            }
        }
    }
}

#[cfg(test)]
impl SharedSource {
    /// The references to the characters: this one plus one per live V8
    /// string of them (and, for ASCII, the bundle's own).
    pub(crate) fn references(&self) -> usize {
        match self {
            SharedSource::Ascii(text) => Arc::strong_count(text),
            SharedSource::Latin1(bytes) => Arc::strong_count(bytes),
            SharedSource::TwoByte(units) => Arc::strong_count(units),
        }
    }
}

/// V8's finalizer of an ASCII source string.
unsafe extern "C" fn release_ascii(data: *mut std::ffi::c_char, len: usize) {
    // SAFETY: `data` and `len` are those `v8_string` passed with one strong
    // count of an `Arc<str>` (see there); V8 calls this once per string.
    unsafe {
        drop(Arc::from_raw(
            std::ptr::slice_from_raw_parts(data as *const u8, len) as *const str,
        ))
    };
}

/// V8's finalizer of a Latin-1 source string.
unsafe extern "C" fn release_latin1(data: *mut std::ffi::c_char, len: usize) {
    // SAFETY: as `release_ascii`, for an `Arc<[u8]>`.
    unsafe {
        drop(Arc::from_raw(std::ptr::slice_from_raw_parts(
            data as *const u8,
            len,
        )))
    };
}

/// V8's finalizer of a two-byte source string.
unsafe extern "C" fn release_two_byte(data: *mut u16, len: usize) {
    // SAFETY: as `release_ascii`, for an `Arc<[u16]>`.
    unsafe {
        drop(Arc::from_raw(std::ptr::slice_from_raw_parts(
            data as *const u16,
            len,
        )))
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::SharedSource;

    #[test]
    fn each_source_takes_the_narrowest_form_v8_reads() {
        let ascii: Arc<str> = Arc::from("let a = 1;");
        assert!(
            matches!(SharedSource::new(&ascii), SharedSource::Ascii(text) if Arc::ptr_eq(&text, &ascii)),
            "ASCII is the bundle's own text"
        );
        let latin1 = Arc::from("// caf\u{e9}");
        assert!(
            matches!(SharedSource::new(&latin1), SharedSource::Latin1(b) if b.last() == Some(&0xe9))
        );
        let wide = Arc::from("// \u{2014} \u{1f980}");
        assert!(matches!(SharedSource::new(&wide), SharedSource::TwoByte(u) if u.len() == 7));
    }
}
