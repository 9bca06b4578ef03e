//! Mending the external strings of a layered snapshot.
//!
//! deno_core appends a sidecar to V8's snapshot data; its last field lists
//! the extensions' sources, which V8's heap refers to by index as external
//! strings. A snapshot made on top of another (as a version's is made on top
//! of isopod's API snapshot) lists only the sources *its own* run loaded,
//! none (a layered runtime registers no sources of the extensions the base
//! holds), while its heap still refers to the base snapshot's strings by
//! their index in the base's list; V8 would then deserialise those strings
//! with no bytes behind them. The layered run numbered the base's strings
//! first, so the version's empty list is replaced by the base's.
//!
//! Invariant: the mended snapshot differs from the one made only in that
//! list; anything unexpected (a list that is not empty, a layout not
//! recognised) is an error, and the version is loaded from source. The
//! version's list depends on the build's extensions, not on the bundle, so
//! the runtime's tests show it empty for every version of a build.
//!
//! Sidecar layout (deno_core 0.413, `snapshot_format.rs`): the V8 data, the
//! sidecar, then the V8 data's length as a little-endian u64. The list is a
//! u32 count then, per entry, a u32 length and the bytes.

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

/// Where the list of `count` external strings at the end of `snapshot`'s
/// sidecar starts (its count): the last position holding `count` from which
/// `count` entries parse and end exactly where the sidecar does (deno_core
/// stores the sources wrapped, so their text cannot be matched; the
/// structure can).
fn list_start(snapshot: &[u8], count: usize) -> Option<usize> {
    let end = snapshot.len().checked_sub(8)?;
    let v8_len = usize::try_from(u64::from_le_bytes(snapshot[end..].try_into().ok()?)).ok()?;
    if v8_len > end {
        return None;
    }
    let ends_the_sidecar = |start: usize| {
        let mut pos = start + 4;
        for _ in 0..count {
            let Some(len) = u32_at(snapshot, pos) else {
                return false;
            };
            pos = match (pos + 4).checked_add(len as usize) {
                Some(next) if next <= end => next,
                _ => return false,
            };
        }
        pos == end
    };
    let wanted = u32::try_from(count).ok()?;
    (v8_len..end.saturating_sub(3))
        .rev()
        .find(|&at| u32_at(snapshot, at) == Some(wanted) && ends_the_sidecar(at))
}

/// `version` with the base snapshot's list of external strings in place of
/// its own, which must be empty.
pub(crate) fn mend(version: &[u8], base: &[u8], base_count: usize) -> Result<Vec<u8>, String> {
    let theirs =
        list_start(base, base_count).ok_or("the base snapshot's source list is not recognised")?;
    let ours = list_start(version, 0).ok_or(
        // A source compiled by the version's own run: V8 would refer to it
        // by an index past the base's list, which the serving process does
        // not have (or a layout not recognised).
        "its snapshot lists sources of its own",
    )?;
    let mut mended = version[..ours].to_vec();
    mended.extend_from_slice(&base[theirs..base.len() - 8]);
    mended.extend_from_slice(&version[version.len() - 8..]);
    Ok(mended)
}
