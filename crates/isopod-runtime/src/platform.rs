//! Process-wide V8 set-up.

use std::sync::Once;

/// Initialises the V8 platform. Call it once on the main thread before any
/// thread creates an isolate; later calls do nothing.
pub fn init_v8() {
    static INIT: Once = Once::new();
    INIT.call_once(|| deno_core::JsRuntime::init_platform(None));
}
