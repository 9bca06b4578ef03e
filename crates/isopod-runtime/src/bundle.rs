//! A bundle: one fully resolved JavaScript file.

use std::path::Path;
use std::sync::Arc;

use deno_core::ModuleSpecifier;

/// A bundle's source and identity.
#[derive(Debug, Clone)]
pub struct Bundle {
    specifier: ModuleSpecifier,
    source: Arc<str>,
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
        Bundle {
            specifier,
            source: source.into(),
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
