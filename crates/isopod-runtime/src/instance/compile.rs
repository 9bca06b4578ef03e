//! Compiling a bundle in an instance's isolate: from the version's shared
//! source (`shared_source.rs`), offered the version's code cache.
//!
//! A classic script is compiled here and run. A module is compiled here
//! first too, although deno_core compiles it again to register it: V8's
//! compilation cache is keyed by source and origin, so deno_core's compile
//! is a hit that returns this compile's script, and the module deno_core
//! evaluates holds the shared source, not deno_core's copy of it (which is
//! left to the collector). The script ids tell whether that happened.
//!
//! Invariants: a compile is offered the cache at most once and V8's answer
//! is counted; when nothing was offered or V8 refused the offer, the caller
//! stores the compile's own cache; the origin is deno_core's for a module
//! (no source map URL, no host-defined options), or the hit would miss.

use deno_core::v8;
use v8::script_compiler::{CachedData, CompileOptions, NoCacheReason, Source};

use crate::bundle::Bundle;

/// A module compiled before deno_core's compile of it: its script, and
/// the id every function of it reports.
pub(super) struct PrecompiledModule {
    pub(super) script: v8::Global<v8::UnboundModuleScript>,
    pub(super) script_id: i32,
}

/// What a compile made, and whether the version still needs the cache of
/// a compile (nothing was offered, or V8 refused it).
pub(super) struct Compiled<'s, T> {
    pub(super) compiled: v8::Local<'s, T>,
    pub(super) needs_cache: bool,
}

/// Compiles `bundle` as a classic script. `None` when it does not compile
/// (the exception is pending in `scope`) or is too long for a V8 string.
pub(super) fn compile_script<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    bundle: &Bundle,
) -> Option<Compiled<'s, v8::Script>> {
    let (code, origin_name) = source_and_name(scope, bundle)?;
    let origin = super::load::bundle_origin(scope, origin_name, false);
    // Outlives `source`, which points into it.
    let offered = bundle.code_cache().take_for_compile();
    let (mut source, options) = source_with_cache(code, &origin, offered.as_deref());
    let compiled =
        v8::script_compiler::compile(scope, &mut source, options, NoCacheReason::NoReason)?;
    Some(Compiled {
        compiled,
        needs_cache: needs_cache(&source, options, bundle),
    })
}

/// Compiles `bundle` as an ES module, for deno_core's compile of it to hit
/// (see the module docs). `None` when it does not compile (deno_core's own
/// compile then reports the error).
pub(super) fn compile_module<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    bundle: &Bundle,
) -> Option<Compiled<'s, v8::Module>> {
    let (code, origin_name) = source_and_name(scope, bundle)?;
    let origin = super::load::bundle_origin(scope, origin_name, true);
    // Outlives `source`, which points into it.
    let offered = bundle.code_cache().take_for_compile();
    let (mut source, options) = source_with_cache(code, &origin, offered.as_deref());
    v8::tc_scope!(let scope, scope);
    let compiled =
        v8::script_compiler::compile_module2(scope, &mut source, options, NoCacheReason::NoReason)?;
    Some(Compiled {
        compiled,
        needs_cache: needs_cache(&source, options, bundle),
    })
}

fn source_and_name<'s>(
    scope: &v8::PinScope<'s, '_>,
    bundle: &Bundle,
) -> Option<(v8::Local<'s, v8::String>, v8::Local<'s, v8::String>)> {
    let code = bundle.shared_source().v8_string(scope)?;
    let name = v8::String::new(scope, bundle.specifier().as_str())?;
    Some((code, name))
}

/// The source to compile, with the version's code cache when one was
/// offered. `Source` points into `offered` without borrowing it: the caller
/// keeps it alive until the compile is done.
fn source_with_cache<'s>(
    code: v8::Local<'s, v8::String>,
    origin: &v8::ScriptOrigin<'s>,
    offered: Option<&[u8]>,
) -> (Source, CompileOptions) {
    match offered {
        Some(bytes) => (
            Source::new_with_cached_data(code, Some(origin), CachedData::new(bytes)),
            CompileOptions::ConsumeCodeCache,
        ),
        None => (
            Source::new(code, Some(origin)),
            CompileOptions::NoCompileOptions,
        ),
    }
}

/// Whether the compile still leaves the version needing a cache, counting
/// a refused offer. An offer is not consumed (nor refused) when V8 found
/// the compile in its own compilation cache.
fn needs_cache(source: &Source, options: CompileOptions, bundle: &Bundle) -> bool {
    if !matches!(options, CompileOptions::ConsumeCodeCache) {
        return true;
    }
    let rejected = source.get_cached_data().is_none_or(|data| data.rejected());
    if rejected {
        bundle.code_cache().note_rejected();
    }
    rejected
}
