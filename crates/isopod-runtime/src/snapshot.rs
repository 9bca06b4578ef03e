//! The startup snapshot built by `build.rs`, embedded in the binary.

/// The V8 startup snapshot: the deno extensions' JavaScript and isopod's
/// bootstrap, already evaluated.
pub(crate) static SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/isopod.snapshot"));

mod residual {
    include!(concat!(env!("OUT_DIR"), "/residual_sources.rs"));
}

/// Lazily loaded extension scripts the snapshot did not consume, for
/// `RuntimeOptions::residual_lazy_js_sources`.
pub(crate) use residual::{RESIDUAL_LAZY_ESM, RESIDUAL_LAZY_JS};

/// How many sources the extensions have (the length of a snapshot's list
/// of external strings).
pub(crate) fn source_count() -> usize {
    isopod_api::extensions()
        .iter()
        .map(|extension| {
            extension.js_files.len()
                + extension.esm_files.len()
                + extension.lazy_loaded_js_files.len()
                + extension.lazy_loaded_esm_files.len()
        })
        .sum()
}

/// The size of the embedded snapshot, in bytes.
pub fn snapshot_size() -> usize {
    SNAPSHOT.len()
}
