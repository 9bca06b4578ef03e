//! Process-wide V8 set-up, and the settings that come with it.
//!
//! Invariant: V8's flags are process-wide and fixed once the platform
//! starts, so the settings are too: the first [`init_v8_with`] (or
//! [`init_v8`]) in a process decides them, and the embedder passes them in
//! (no library code reads the environment).

use std::sync::OnceLock;

/// Process-wide settings of the V8 engine, fixed by the first
/// [`init_v8_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V8Settings {
    /// Extra V8 flags (for example `--max-old-space-size=64`), for
    /// diagnosis. A version's code cache is keyed by them, so a cache is
    /// never offered to a V8 set up differently.
    pub flags: String,
    /// Whether instances reuse a version's code cache (on by default; off
    /// compiles every instance from source, to measure or rule it out).
    pub code_cache: bool,
}

impl Default for V8Settings {
    fn default() -> V8Settings {
        V8Settings {
            flags: String::new(),
            code_cache: true,
        }
    }
}

static SETTINGS: OnceLock<V8Settings> = OnceLock::new();

/// [`init_v8_with`] the default settings.
pub fn init_v8() {
    init_v8_with(&V8Settings::default());
}

/// Initialises the V8 platform with `settings`, and pays WebCrypto's
/// one-time set-up (`isopod_api::warm_up_crypto`). Call it on the main
/// thread before any thread creates an isolate; later calls do nothing
/// (the first call's settings stand).
pub fn init_v8_with(settings: &V8Settings) {
    SETTINGS.get_or_init(|| {
        // A WebAssembly memory may not outgrow the default heap budget
        // (pages of 64 KiB). The flag is process-wide; an app with a smaller
        // heap limit is held to it by the driver's external-memory check.
        let wasm_pages = crate::Limits::default().heap_max_bytes() / (64 * 1024);
        deno_core::v8::V8::set_flags_from_string(&format!("--wasm-max-mem-pages={wasm_pages}"));
        if !settings.flags.is_empty() {
            deno_core::v8::V8::set_flags_from_string(&settings.flags);
        }
        deno_core::JsRuntime::init_platform(None);
        // On a thread of its own, so start-up does not wait for it; a first
        // crypto call racing it blocks (no CPU charged) until it is done.
        let warm_up = std::thread::Builder::new()
            .name("isopod-crypto-init".into())
            .spawn(isopod_api::warm_up_crypto);
        if warm_up.is_err() {
            isopod_api::warm_up_crypto();
        }
        settings.clone()
    });
}

/// The settings V8 was set up with (the defaults before [`init_v8_with`]).
pub(crate) fn settings() -> &'static V8Settings {
    static DEFAULTS: OnceLock<V8Settings> = OnceLock::new();
    SETTINGS
        .get()
        .unwrap_or_else(|| DEFAULTS.get_or_init(V8Settings::default))
}
