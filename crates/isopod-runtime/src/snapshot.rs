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

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_sources.rs"));
}

pub(crate) use embedded::embedded_source;

/// isopod's extensions with their JavaScript taken from the binary rather
/// than from the paths it was built from, for a snapshotting isolate that
/// evaluates them from scratch (`version_snapshot`). Same extensions, same
/// order, same sources as the embedded snapshot's.
pub(crate) fn extensions_from_memory() -> Vec<deno_core::Extension> {
    use deno_core::{ExtensionFileSource, ExtensionFileSourceCode};
    let mut extensions = isopod_api::extensions();
    for extension in &mut extensions {
        for files in [
            &mut extension.js_files,
            &mut extension.esm_files,
            &mut extension.lazy_loaded_js_files,
            &mut extension.lazy_loaded_esm_files,
        ] {
            let in_memory: Vec<ExtensionFileSource> = files
                .iter()
                .map(|file| match (&file.code, embedded_source(file.specifier)) {
                    (ExtensionFileSourceCode::LoadedFromFsDuringSnapshot(_), Some(code)) => {
                        ExtensionFileSource::loaded_from_memory_during_snapshot(
                            file.specifier,
                            code,
                        )
                    }
                    _ => file.clone(),
                })
                .collect();
            *files = in_memory.into();
        }
    }
    extensions
}

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
