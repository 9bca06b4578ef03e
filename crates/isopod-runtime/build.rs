//! Builds isopod's startup snapshot: the deno extensions' JavaScript and
//! isopod's bootstrap, evaluated once here so that every isolate starts from
//! the result instead of parsing and running them again.
//!
//! It runs in its own process (a build script), as V8 needs different flags
//! to make a snapshot than to run from one. Lazily loaded extension scripts
//! that the bootstrap did not load are written out as "residual" sources,
//! embedded next to the snapshot so they can still be loaded at run time.

use std::fmt::Write as _;
use std::path::PathBuf;

use deno_core::snapshot::{create_snapshot, CreateSnapshotOptions};
use deno_core::ExtensionFileSourceCode;

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let extensions = isopod_api::extensions();

    // Collect every lazily loaded source before the extensions are consumed.
    let mut lazy_js = Vec::new();
    let mut lazy_esm = Vec::new();
    for extension in &extensions {
        for (files, into) in [
            (&extension.lazy_loaded_js_files, &mut lazy_js),
            (&extension.lazy_loaded_esm_files, &mut lazy_esm),
        ] {
            for file in files.iter() {
                if let ExtensionFileSourceCode::LoadedFromFsDuringSnapshot(path) = file.code {
                    into.push((file.specifier, path));
                }
            }
        }
    }

    let output = create_snapshot(
        CreateSnapshotOptions {
            cargo_manifest_dir: env!("CARGO_MANIFEST_DIR"),
            startup_snapshot: None,
            skip_op_registration: false,
            extensions,
            extension_transpiler: None,
            with_runtime_cb: None,
        },
        None,
    )
    .unwrap_or_else(|e| panic!("making isopod's startup snapshot failed: {e}"));

    std::fs::write(out_dir.join("isopod.snapshot"), &output.output).expect("writing the snapshot");

    // deno_core looks residual sources up by binary search.
    lazy_js.sort();
    lazy_esm.sort();
    let consumed = &output.consumed_lazy_specifiers;
    let mut residual = String::new();
    for (name, files) in [
        ("RESIDUAL_LAZY_JS", &lazy_js),
        ("RESIDUAL_LAZY_ESM", &lazy_esm),
    ] {
        writeln!(residual, "pub(crate) static {name}: &[(&str, &str)] = &[").unwrap();
        for (specifier, path) in files.iter() {
            if !consumed.iter().any(|c| c == specifier) {
                writeln!(residual, "    ({specifier:?}, include_str!({path:?})),").unwrap();
            }
        }
        writeln!(residual, "];").unwrap();
    }
    std::fs::write(out_dir.join("residual_sources.rs"), residual)
        .expect("writing residual sources");

    for path in output.files_loaded_during_snapshot {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}
