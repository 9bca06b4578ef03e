//! Process-wide V8 set-up.

use std::sync::Once;

/// Initialises the V8 platform, and pays WebCrypto's one-time set-up
/// (`isopod_api::warm_up_crypto`). Call it once on the main thread before
/// any thread creates an isolate; later calls do nothing.
///
/// `ISOPOD_V8_FLAGS` (for example `--max-old-space-size=64`) is passed to V8
/// first, for diagnosis; V8 flags are process-wide and fixed from here on.
pub fn init_v8() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // A WebAssembly memory may not outgrow the default heap budget
        // (pages of 64 KiB). The flag is process-wide; an app with a smaller
        // heap limit is held to it by the driver's external-memory check.
        let wasm_pages = crate::Limits::default().heap_max_bytes() / (64 * 1024);
        deno_core::v8::V8::set_flags_from_string(&format!("--wasm-max-mem-pages={wasm_pages}"));
        if let Ok(flags) = std::env::var("ISOPOD_V8_FLAGS") {
            deno_core::v8::V8::set_flags_from_string(&flags);
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
    });
}
