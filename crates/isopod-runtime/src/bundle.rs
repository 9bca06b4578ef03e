//! A bundle: one fully resolved JavaScript file, and which of the two Workers
//! styles it is written in.

use std::path::Path;
use std::sync::Arc;

use deno_core::ModuleSpecifier;

/// How a bundle hands requests to isopod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleStyle {
    /// An ES module whose default export has `fetch(request, env, ctx)`.
    Module,
    /// A classic script calling `addEventListener('fetch', …)`.
    ServiceWorker,
}

/// A bundle's source and identity.
#[derive(Debug, Clone)]
pub struct Bundle {
    specifier: ModuleSpecifier,
    source: Arc<str>,
    style: BundleStyle,
}

/// A bundle that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file could not be read.
    #[error("cannot read bundle {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("bundle {path} is not UTF-8 text")]
    NotUtf8 {
        /// The path given.
        path: String,
    },
}

impl Bundle {
    /// Reads a bundle from a file.
    pub fn from_file(path: &Path) -> Result<Bundle, BundleError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| BundleError::Read {
            path: shown.clone(),
            source,
        })?;
        let source = String::from_utf8(bytes).map_err(|_| BundleError::NotUtf8 { path: shown })?;
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let specifier = ModuleSpecifier::from_file_path(&absolute)
            .unwrap_or_else(|()| bundle_specifier("bundle.js"));
        Ok(Bundle::new(specifier, source))
    }

    /// A bundle from source text; `name` appears in stack traces.
    pub fn from_source(name: &str, source: impl Into<Arc<str>>) -> Bundle {
        Bundle::new(bundle_specifier(name), source)
    }

    fn new(specifier: ModuleSpecifier, source: impl Into<Arc<str>>) -> Bundle {
        let source = source.into();
        let style = detect_style(&source);
        Bundle {
            specifier,
            source,
            style,
        }
    }

    /// The URL the bundle is evaluated under (what stack traces show).
    pub fn specifier(&self) -> &ModuleSpecifier {
        &self.specifier
    }

    /// The source text.
    pub fn source(&self) -> &Arc<str> {
        &self.source
    }

    /// The bundle's style.
    pub fn style(&self) -> BundleStyle {
        self.style
    }
}

fn bundle_specifier(name: &str) -> ModuleSpecifier {
    let encoded: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    ModuleSpecifier::parse(&format!("isopod:///{encoded}"))
        .expect("a sanitised name is a valid URL path")
}

/// A bundle is a module when any line starts with an `import` or `export`
/// statement, the way esbuild and rolldown emit ESM; otherwise it is a classic
/// service-worker script. (A module with a stray `import` is then refused with
/// the specifier named, rather than misread as a script.)
fn detect_style(source: &str) -> BundleStyle {
    let is_module = source.lines().any(|line| {
        let line = line.trim_start();
        let statement = |keyword: &str| {
            line.strip_prefix(keyword).is_some_and(|rest| {
                rest.starts_with([' ', '{', '*', '\t', '"', '\'']) || rest.is_empty()
            })
        };
        statement("export") || (statement("import") && !line.starts_with("import("))
    });
    if is_module {
        BundleStyle::Module
    } else {
        BundleStyle::ServiceWorker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esbuild_esm_output_is_a_module() {
        let src = "var x = 1;\nexport {\n  x as default\n};\n";
        assert_eq!(detect_style(src), BundleStyle::Module);
        assert_eq!(
            detect_style("export default { fetch() {} }"),
            BundleStyle::Module
        );
        assert_eq!(detect_style("import x from 'y';"), BundleStyle::Module);
    }

    #[test]
    fn service_worker_scripts_are_scripts() {
        let src = "(() => {\n  addEventListener('fetch', e => e.respondWith(new Response('x')));\n})();\n";
        assert_eq!(detect_style(src), BundleStyle::ServiceWorker);
        assert_eq!(
            detect_style("const exported = 1; importScripts;"),
            BundleStyle::ServiceWorker
        );
    }
}
