//! The module loader of a bundle: bundles are self-contained, so it resolves
//! the bundle itself and refuses every other specifier, static or dynamic.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;

use deno_core::error::ModuleLoaderError;
use deno_core::{
    ModuleLoadOptions, ModuleLoadReferrer, ModuleLoadResponse, ModuleLoader, ModuleSource,
    ModuleSourceCode, ModuleSpecifier, ModuleType, ResolutionKind, SourceCodeCacheInfo,
};
use deno_error::JsErrorBox;

use crate::Bundle;

/// Created with the isolate (deno_core takes the loader at creation), told
/// its bundle when one is loaded.
#[derive(Default)]
pub(crate) struct BundleLoader {
    bundle: RefCell<Option<Bundle>>,
    /// The inline source map of a classic script (modules' inline maps are
    /// found by deno_core itself when the module is compiled).
    script_source_map: RefCell<Option<Vec<u8>>>,
    /// Whether the module's compile was offered the version's code cache.
    /// deno_core reports a fresh cache only when there was none to offer or
    /// V8 rejected the offer, so a report after an offer is a rejection.
    offered_code_cache: Cell<bool>,
    /// Whether the instance compiled the module itself first (see
    /// `instance/compile.rs`): that compile was the one offered the cache.
    precompiled: Cell<bool>,
}

impl BundleLoader {
    pub(crate) fn set_bundle(&self, bundle: &Bundle) {
        *self.bundle.borrow_mut() = Some(bundle.clone());
        *self.script_source_map.borrow_mut() = inline_source_map(bundle.source());
    }

    /// Says whether the instance compiled the module itself before asking
    /// deno_core to load it.
    pub(crate) fn set_precompiled(&self, precompiled: bool) {
        self.precompiled.set(precompiled);
    }

    /// The bundle, if `specifier` names it (a cheap clone).
    fn main(&self, specifier: &str) -> Option<Bundle> {
        self.bundle
            .borrow()
            .as_ref()
            .filter(|b| b.specifier().as_str() == specifier)
            .cloned()
    }
}

impl ModuleLoader for BundleLoader {
    fn resolve(
        &self,
        specifier: &str,
        referrer: &str,
        _kind: ResolutionKind,
    ) -> Result<ModuleSpecifier, ModuleLoaderError> {
        if let Some(main) = self.main(specifier) {
            return Ok(main.specifier().clone());
        }
        Err(JsErrorBox::type_error(format!(
            "isopod bundles are self-contained: cannot import \"{specifier}\" (from {referrer}); \
             bundle it in with `esbuild --bundle`"
        )))
    }

    fn load(
        &self,
        specifier: &ModuleSpecifier,
        _referrer: Option<&ModuleLoadReferrer>,
        _options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        let Some(bundle) = self.main(specifier.as_str()) else {
            return ModuleLoadResponse::Sync(Err(JsErrorBox::type_error(format!(
                "isopod bundles are self-contained: cannot load \"{specifier}\""
            ))));
        };
        // The version's code cache, when an earlier compile made one: V8
        // then skips parsing and compiling what it already did.
        let cache = bundle.code_cache();
        // After the instance's own compile, deno_core's is a hit in V8's
        // compilation cache and never reads the cache: it is handed over
        // (uncounted) only so that deno_core does not make another.
        let offered = match self.precompiled.get() {
            true => cache.peek(),
            false => cache.take_for_compile(),
        };
        self.offered_code_cache
            .set(offered.is_some() && !self.precompiled.get());
        let code_cache = SourceCodeCacheInfo {
            hash: cache.key,
            data: offered.map(|bytes| Cow::Owned(bytes.to_vec())),
        };
        ModuleLoadResponse::Sync(Ok(ModuleSource::new(
            ModuleType::JavaScript,
            ModuleSourceCode::String(bundle.source().clone().into()),
            specifier,
            Some(code_cache),
        )))
    }

    fn code_cache_ready(
        &self,
        specifier: ModuleSpecifier,
        hash: u64,
        code_cache: &[u8],
    ) -> Pin<Box<dyn Future<Output = ()>>> {
        if let Some(bundle) = self.main(specifier.as_str()) {
            if self.offered_code_cache.replace(false) {
                bundle.code_cache().note_rejected();
            }
            bundle.code_cache().store_compiled(hash, code_cache);
        }
        Box::pin(std::future::ready(()))
    }

    /// The original sources named by a bundle's source map are never on
    /// this machine; stacks should name them anyway, as workerd's do.
    fn source_map_source_exists(&self, _source_url: &str) -> Option<bool> {
        Some(true)
    }

    fn get_source_map(&self, file_name: &str) -> Option<Cow<'_, [u8]>> {
        self.main(file_name)?;
        self.script_source_map.borrow().clone().map(Cow::Owned)
    }
}

/// The JSON of a `//# sourceMappingURL=data:application/json;base64,…`
/// comment, if the source ends with one.
fn inline_source_map(source: &str) -> Option<Vec<u8>> {
    const MARKER: &str = "sourceMappingURL=data:application/json";
    let start = source.rfind(MARKER)?;
    let rest = &source[start + MARKER.len()..];
    let encoded = rest.split_once("base64,")?.1;
    let encoded = encoded.split_whitespace().next()?;
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_inline_source_maps() {
        let src = "x\n//# sourceMappingURL=data:application/json;base64,eyJhIjoxfQ==\n";
        assert_eq!(inline_source_map(src).as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(inline_source_map("no map"), None);
    }
}
