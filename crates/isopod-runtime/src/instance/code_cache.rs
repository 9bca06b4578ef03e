//! The version's code cache, made after execution.
//!
//! A compile's own cache holds what V8 compiled eagerly: the top level and
//! little else, since V8 compiles functions lazily, on their first call. An
//! instance loaded from source therefore keeps its compiled script until
//! its first request has run, then makes the version's cache from it: by
//! then it holds every function the top-level code and that request
//! compiled, and later instances of the version compile none of them.
//!
//! The compiled script is the one isopod compiled itself (`compile.rs`):
//! for a module, deno_core's compile of it was a hit in V8's compilation
//! cache, which the comparison of script ids confirms before it is kept.
//!
//! Invariants: the cache is made at most once per instance, inside a window
//! on the instance's thread, outside any request's segment (its CPU is the
//! instance's, not a request's); the kept handle is released before the
//! isolate in `Drop`.

use std::sync::Arc;

use deno_core::v8;

use super::compile::PrecompiledModule;
use super::Instance;
use crate::bundle::{Bundle, CodeCache};
use crate::window::WindowKind;

/// What an instance loaded from source keeps until its first request ran.
pub(super) struct PendingCodeCache {
    script: CompiledScript,
    cache: Arc<CodeCache>,
}

enum CompiledScript {
    Classic(v8::Global<v8::UnboundScript>),
    Module(v8::Global<v8::UnboundModuleScript>),
}

/// The version's cache, if it still lacks what execution compiles (and the
/// process keeps code caches at all).
fn still_wanted(bundle: &Bundle) -> Option<Arc<CodeCache>> {
    let cache = bundle.code_cache();
    (!cache.made_after_execution() && crate::platform::settings().code_cache).then(|| cache.clone())
}

impl PendingCodeCache {
    /// Keeps a classic script's compiled script, unless its version's cache
    /// already holds what execution compiled.
    pub(super) fn classic(
        scope: &mut v8::PinScope,
        script: v8::Local<v8::Script>,
        bundle: &Bundle,
    ) -> Option<PendingCodeCache> {
        let cache = still_wanted(bundle)?;
        let unbound = script.get_unbound_script(scope);
        Some(PendingCodeCache {
            script: CompiledScript::Classic(v8::Global::new(scope, unbound)),
            cache,
        })
    }

    /// Keeps the module compiled here before deno_core's compile
    /// (`compile.rs`), unless the version's cache already holds what
    /// execution compiled or deno_core's module is not that script after
    /// all. `exported` is the module's default export: the script id of its
    /// `fetch` tells the module's.
    pub(super) fn module(
        scope: &mut v8::PinScope,
        bundle: &Bundle,
        exported: v8::Local<v8::Value>,
        precompiled: PrecompiledModule,
    ) -> Option<PendingCodeCache> {
        let cache = still_wanted(bundle)?;
        let exported = v8::Local::<v8::Object>::try_from(exported).ok()?;
        let key = v8::String::new(scope, "fetch")?;
        let fetch = exported.get(scope, key.into())?;
        let fetch = v8::Local::<v8::Function>::try_from(fetch).ok()?;
        // Another script: deno_core's compile missed V8's compilation
        // cache, and a cache of this one would not hold what ran.
        if fetch.script_id() != precompiled.script_id {
            return None;
        }
        Some(PendingCodeCache {
            script: CompiledScript::Module(precompiled.script),
            cache,
        })
    }
}

impl Instance {
    /// Makes the version's code cache from the script this instance kept
    /// (see the module docs), once its first request has run.
    pub(super) fn make_code_cache_after_execution(&mut self) {
        let Some(pending) = self.pending_code_cache.take() else {
            return;
        };
        // Another instance of the version may have made it meanwhile.
        if pending.cache.made_after_execution() {
            return;
        }
        let cache = pending.cache.clone();
        // The kept handle is released inside the window, with the isolate
        // entered, as every global is.
        let made = self.window(WindowKind::Other, move |runtime| {
            deno_core::scope!(scope, runtime);
            match pending.script {
                CompiledScript::Classic(script) => {
                    v8::Local::new(scope, script).create_code_cache()
                }
                CompiledScript::Module(script) => v8::Local::new(scope, script).create_code_cache(),
            }
        });
        if let Some(bytes) = made {
            cache.store_after_execution(&bytes);
        }
    }
}
