//! What the snapshotting isolate watches on the Rust side.
//!
//! A version's snapshot holds its JavaScript heap and nothing else: state an
//! op keeps in Rust for the isolate is gone in every instance started from
//! it. The JavaScript side records its own taints (`10_global_scope.js`);
//! this records the one kind it cannot see, a `Blob`'s bytes, which deno_web
//! keeps in a store outside the heap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use deno_core::url::Url;
use deno_web::{Blob, BlobPart, BlobStore, BlobStoreTrait};
use uuid::Uuid;

/// A blob store that remembers whether anything was ever put in it.
#[derive(Debug, Default)]
pub struct WatchedBlobStore {
    inner: BlobStore,
    used: AtomicBool,
}

impl WatchedBlobStore {
    /// Whether a `Blob`, `File` or object URL was made in this store.
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }
}

impl BlobStoreTrait for WatchedBlobStore {
    fn insert_part(&self, part: Arc<dyn BlobPart + Send + Sync>) -> Uuid {
        self.used.store(true, Ordering::Relaxed);
        self.inner.insert_part(part)
    }

    fn get_part(&self, id: &Uuid) -> Option<Arc<dyn BlobPart + Send + Sync>> {
        self.inner.get_part(id)
    }

    fn remove_part(&self, id: &Uuid) -> Option<Arc<dyn BlobPart + Send + Sync>> {
        self.inner.remove_part(id)
    }

    fn get_object_url(&self, url: Url) -> Option<Arc<Blob>> {
        self.inner.get_object_url(url)
    }

    fn insert_object_url(&self, blob: Blob, maybe_location: Option<Url>) -> Url {
        self.used.store(true, Ordering::Relaxed);
        self.inner.insert_object_url(blob, maybe_location)
    }

    fn remove_object_url(&self, url: &Url) {
        self.inner.remove_object_url(url)
    }

    fn clear(&self) {
        self.inner.clear()
    }
}
