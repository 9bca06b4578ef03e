//! Mending the external strings of a layered snapshot.
//!
//! deno_core appends a sidecar to V8's snapshot data; its last field lists
//! the extensions' sources, which V8's heap refers to by index as external
//! strings. A snapshot made on top of another (as a version's is made on top
//! of isopod's API snapshot) lists only the sources *its own* run compiled,
//! none of them in practice, while its heap still refers to the base
//! snapshot's strings by their index in the base's list; V8 would then
//! deserialise those strings with no bytes behind them. The layered run
//! numbered the base's strings first, so the version's list is mended by
//! putting the base's in its place.
//!
//! Invariant: the mended snapshot differs from the one made only in that
//! list; anything unexpected (a source compiled by the version's own run, a
//! layout not recognised) is an error, and the version is loaded from
//! source.
//!
//! Sidecar layout (deno_core 0.413, `snapshot_format.rs`): the V8 data, the
//! sidecar, then the V8 data's length as a little-endian u64. The list is a
//! u32 count then, per entry, a u32 length and the bytes.

use std::ops::Range;

/// The byte ranges of one snapshot's external-string list.
struct ExternalStrings {
    /// Where the list (its count) starts in the snapshot.
    start: usize,
    /// Each entry's bytes (an empty range for an empty entry).
    entries: Vec<Range<usize>>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

/// Finds the list at the end of `snapshot`'s sidecar: the last position
/// holding `count` from which `count` entries parse and end exactly where
/// the sidecar does (deno_core stores the sources wrapped, so their text
/// cannot be matched; the structure can).
fn external_strings(snapshot: &[u8], count: usize) -> Option<ExternalStrings> {
    let end = snapshot.len().checked_sub(8)?;
    let v8_len = usize::try_from(u64::from_le_bytes(snapshot[end..].try_into().ok()?)).ok()?;
    if v8_len > end {
        return None;
    }
    let parse_from = |start: usize| -> Option<Vec<Range<usize>>> {
        let mut pos = start + 4;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let len = u32_at(snapshot, pos)? as usize;
            let text = pos + 4..(pos + 4).checked_add(len)?;
            if text.end > end {
                return None;
            }
            pos = text.end;
            entries.push(text);
        }
        (pos == end).then_some(entries)
    };
    let wanted = u32::try_from(count).ok()?;
    (v8_len..end.saturating_sub(3))
        .rev()
        .filter(|&at| u32_at(snapshot, at) == Some(wanted))
        .find_map(|start| parse_from(start).map(|entries| ExternalStrings { start, entries }))
}

/// `version` with the base snapshot's list of external strings in place of
/// its own.
pub(crate) fn mend(version: &[u8], base: &[u8], base_count: usize) -> Result<Vec<u8>, String> {
    let unrecognised =
        |which: &str| format!("the {which} snapshot's source list is not recognised");
    let theirs = external_strings(base, base_count).ok_or_else(|| unrecognised("base"))?;
    let ours = (1..=base_count)
        .rev()
        .find_map(|count| external_strings(version, count))
        .ok_or_else(|| unrecognised("version"))?;
    if ours.entries.iter().any(|entry| !entry.is_empty()) {
        // Compiled in the version's run: V8 would refer to it by an index
        // past the base's list, which the serving process does not have.
        return Err(
            "its top-level code loaded a part of the runtime the base snapshot does not hold"
                .into(),
        );
    }
    let mut mended = version[..ours.start].to_vec();
    let base_end = base.len() - 8;
    mended.extend_from_slice(&base[theirs.start..base_end]);
    mended.extend_from_slice(&version[version.len() - 8..]);
    Ok(mended)
}
