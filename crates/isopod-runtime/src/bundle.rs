//! A bundle: one fully resolved JavaScript file.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use deno_core::ModuleSpecifier;

use crate::shared_source::SharedSource;

/// A bundle's source and identity, and what its first load learnt: whether
/// it is a module, and the V8 code cache of its compiled code. Clones share
/// these: every instance of a version reuses them, and they go away with the
/// last clone.
#[derive(Debug, Clone)]
pub struct Bundle {
    specifier: ModuleSpecifier,
    source: Arc<str>,
    code_cache: Arc<CodeCache>,
    /// Whether it is an ES module (or a classic script), once an instance
    /// has found out.
    is_module: Arc<OnceLock<bool>>,
    /// How long the first successful load took.
    first_load: Arc<OnceLock<std::time::Duration>>,
    /// The source as V8 strings share it, made by the first compile.
    shared_source: Arc<OnceLock<SharedSource>>,
}

/// The V8 code cache of one bundle.
///
/// Made in two steps: a first compile stores the cache of what V8 compiled
/// eagerly (little more than the top level); the first instance loaded from
/// source that then serves a request replaces it with a cache made after
/// execution, which also holds every function the top-level code and that
/// request compiled, so later instances compile none of them.
#[derive(Debug)]
pub(crate) struct CodeCache {
    /// Identifies the source *and* the V8 build and flags it was made by, so
    /// a cache is never offered to another V8.
    pub(crate) key: u64,
    bytes: Mutex<Option<Arc<[u8]>>>,
    /// Whether `bytes` were made after a request ran.
    after_execution: AtomicBool,
    offered: AtomicU64,
    /// Offers V8 refused: a rejected cache is made again.
    rejected: AtomicU64,
}

/// The process's code-cache counters, over every bundle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeCacheCounts {
    /// Compiles that were offered a version's code cache.
    pub offers: u64,
    /// Offers V8 rejected (the bundle was compiled from source instead).
    pub rejections: u64,
    /// Caches made after an instance's first request ran.
    pub made_after_execution: u64,
}

static OFFERS: AtomicU64 = AtomicU64::new(0);
static REJECTIONS: AtomicU64 = AtomicU64::new(0);
static MADE_AFTER_EXECUTION: AtomicU64 = AtomicU64::new(0);

/// How often compiles were offered a code cache, how often V8 rejected the
/// offer, and how many caches were made after execution, in this process.
pub fn code_cache_counts() -> CodeCacheCounts {
    CodeCacheCounts {
        offers: OFFERS.load(Ordering::Relaxed),
        rejections: REJECTIONS.load(Ordering::Relaxed),
        made_after_execution: MADE_AFTER_EXECUTION.load(Ordering::Relaxed),
    }
}

impl CodeCache {
    fn new(source: &str) -> CodeCache {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut hasher);
        deno_core::v8::V8::get_version().hash(&mut hasher);
        crate::platform::settings().flags.hash(&mut hasher);
        CodeCache {
            key: hasher.finish(),
            bytes: Mutex::new(None),
            after_execution: AtomicBool::new(false),
            offered: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// The cached bytes, if a compile has produced them; counts the offer.
    /// None when the process's `V8Settings` turn the cache off.
    pub(crate) fn take_for_compile(&self) -> Option<Arc<[u8]>> {
        let bytes = self.peek();
        if bytes.is_some() {
            self.offered.fetch_add(1, Ordering::Relaxed);
            OFFERS.fetch_add(1, Ordering::Relaxed);
        }
        bytes
    }

    /// The cached bytes, without counting an offer.
    pub(crate) fn peek(&self) -> Option<Arc<[u8]>> {
        if !crate::platform::settings().code_cache {
            return None;
        }
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn note_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        REJECTIONS.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the cache already holds what execution compiled: an instance
    /// loaded from source need not make another.
    pub(crate) fn made_after_execution(&self) -> bool {
        self.after_execution.load(Ordering::Relaxed)
    }

    /// Keeps the cache a compile made (what V8 compiled eagerly). It never
    /// replaces one made after execution unless that one was rejected, in
    /// which case V8 made this one because it could not use the other.
    pub(crate) fn store_compiled(&self, key: u64, bytes: &[u8]) {
        if key == self.key {
            *self.bytes.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes.into());
            self.after_execution.store(false, Ordering::Relaxed);
        }
    }

    /// Keeps a cache made after an instance's first request ran.
    pub(crate) fn store_after_execution(&self, bytes: &[u8]) {
        *self.bytes.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes.into());
        self.after_execution.store(true, Ordering::Relaxed);
        MADE_AFTER_EXECUTION.fetch_add(1, Ordering::Relaxed);
    }
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

    pub(crate) fn new(specifier: ModuleSpecifier, source: impl Into<Arc<str>>) -> Bundle {
        let source = source.into();
        Bundle {
            specifier,
            code_cache: Arc::new(CodeCache::new(&source)),
            is_module: Arc::default(),
            first_load: Arc::default(),
            shared_source: Arc::default(),
            source,
        }
    }

    /// The size of the code cache, once a first compile made it.
    pub fn code_cache_len(&self) -> usize {
        let bytes = self
            .code_cache
            .bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        bytes.as_ref().map_or(0, |b| b.len())
    }

    /// How many compiles were offered the code cache.
    pub fn code_cache_uses(&self) -> u64 {
        self.code_cache.offered.load(Ordering::Relaxed)
    }

    /// How many offers of the code cache V8 refused.
    pub fn code_cache_rejections(&self) -> u64 {
        self.code_cache.rejected.load(Ordering::Relaxed)
    }

    /// Whether the code cache was made after a request ran (and so holds the
    /// functions execution compiled), rather than by a compile alone.
    pub fn code_cache_after_execution(&self) -> bool {
        self.code_cache.made_after_execution()
    }

    /// How long the first load of this bundle into a blank instance took
    /// (compiling it and running its top-level code), once one succeeded.
    pub fn first_load_time(&self) -> Option<std::time::Duration> {
        self.first_load.get().copied()
    }

    pub(crate) fn note_load_time(&self, took: std::time::Duration) {
        let _ = self.first_load.set(took);
    }

    pub(crate) fn is_module(&self) -> &OnceLock<bool> {
        &self.is_module
    }

    /// The source in the form every isolate's strings of it share.
    pub(crate) fn shared_source(&self) -> &SharedSource {
        self.shared_source
            .get_or_init(|| SharedSource::new(&self.source))
    }

    pub(crate) fn code_cache(&self) -> &Arc<CodeCache> {
        &self.code_cache
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
