//! Workers KV: namespaces of keys to byte values, each with optional JSON
//! metadata and expiration, behind the same calls and limits as Cloudflare's
//! `KVNamespace` binding.
//!
//! A [`KvNamespace`] is the handle the JS binding holds: one method per
//! Workers call (`get`, `get([...])`, `put`, `delete`, `list`), async,
//! validating arguments exactly as Workers does (see [`limits`]) before the
//! backend sees them, so both backends fail alike. Backends: a SQLite file
//! ([`SqliteKvStore`]) or Redis ([`RedisKvStore`]).
//!
//! Invariants, for every backend:
//! - A namespace's calls reach only its own entries, whatever key, prefix
//!   or cursor they pass: keys are always bound as data (SQL parameters,
//!   Redis arguments) under the namespace's own id or unambiguous prefix,
//!   and cursors are signed for their namespace ([`CursorKey`]).
//! - An entry whose expiration (seconds since the epoch) is at or before
//!   now is gone for every read at once, purged or not.
//! - `list` returns keys in byte order of their UTF-8 encoding, at most
//!   `limit` a page; a page that may not be the last carries a cursor
//!   resuming strictly after its last key.
//! - A write has happened when its future resolves: a read that starts
//!   after sees it.

mod cursor;
mod error;
pub mod limits;
mod redis;
mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use cursor::CursorKey;
pub use error::{JsErrorClass, KvError, KvOp};
pub use redis::RedisKvStore;
pub use sqlite::{SqliteKvStore, KV_FILE_NAME};

use crate::clock::Clock;
use error::BackendError;

/// One stored value, as `getWithMetadata` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value's bytes (the JS side decodes them as text, JSON,
    /// `ArrayBuffer` or a stream).
    pub value: Vec<u8>,
    /// The metadata, as JSON text (the JS side parses it), if any was put.
    pub metadata: Option<String>,
    /// When the entry expires, in seconds since the Unix epoch.
    pub expiration: Option<u64>,
}

/// The options of `put`, as Workers takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Absolute expiration, seconds since the Unix epoch; at least 60 s
    /// ahead.
    pub expiration: Option<i64>,
    /// Expiration relative to now, in seconds; at least 60. Wins over
    /// `expiration` when both are given (as miniflare does).
    pub expiration_ttl: Option<i64>,
    /// Metadata as JSON text (`JSON.stringify` of the app's value), at most
    /// 1024 bytes.
    pub metadata: Option<String>,
}

/// The options of `list`, as Workers takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Keys per page, 1 to 1000; `None` is 1000. The JS side passes `None`
    /// for a limit of 0 or less, as workerd does.
    pub limit: Option<i64>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

/// A key in a `list` page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListKey {
    /// The key.
    pub name: String,
    /// When it expires, in seconds since the Unix epoch.
    pub expiration: Option<u64>,
    /// Its metadata, as JSON text.
    pub metadata: Option<String>,
}

/// One page of `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListResult {
    /// The keys, in byte order.
    pub keys: Vec<ListKey>,
    /// True when no key follows this page.
    pub list_complete: bool,
    /// Resumes after this page; set exactly when `list_complete` is false.
    pub cursor: Option<String>,
}

/// Where a namespace's entries live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvBackend {
    /// The data directory's `kv.sqlite3`.
    Sqlite,
    /// A Redis server ([`RedisKvStore`]).
    Redis,
}

impl KvBackend {
    /// `sqlite` or `redis`.
    pub fn as_str(self) -> &'static str {
        match self {
            KvBackend::Sqlite => "sqlite",
            KvBackend::Redis => "redis",
        }
    }
}

/// How KV stores behave.
#[derive(Debug, Clone)]
pub struct KvOptions {
    /// Where "now" comes from, for expirations.
    pub clock: Clock,
    /// How often the SQLite store deletes expired entries (they are hidden
    /// from reads from the moment they expire either way).
    pub purge_interval: Duration,
    /// How long a Redis call may take before it fails as unavailable.
    pub redis_timeout: Duration,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions {
            clock: Clock::system(),
            purge_interval: Duration::from_secs(60),
            redis_timeout: Duration::from_secs(2),
        }
    }
}

/// A page as a backend returns it: keys in order, and whether more may
/// follow.
pub(crate) struct Page {
    keys: Vec<ListKey>,
    more: bool,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteNamespace),
    Redis(redis::RedisNamespace),
}

/// A KV namespace: what `env.BINDING` of a KV binding wraps. Cheap to
/// clone; clones share everything.
#[derive(Clone)]
pub struct KvNamespace {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// What cursors are bound to: backend and name.
    scope: String,
    clock: Clock,
    cursor_key: CursorKey,
    backend: Backend,
}

impl std::fmt::Debug for KvNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvNamespace")
            .field("name", &self.inner.name)
            .field("backend", &self.backend())
            .finish()
    }
}

impl KvNamespace {
    fn new(name: &str, clock: Clock, cursor_key: CursorKey, backend: Backend) -> KvNamespace {
        let kind = match backend {
            Backend::Sqlite(_) => KvBackend::Sqlite,
            Backend::Redis(_) => KvBackend::Redis,
        };
        KvNamespace {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                scope: format!("{}/{name}", kind.as_str()),
                clock,
                cursor_key,
                backend,
            }),
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where its entries live.
    pub fn backend(&self) -> KvBackend {
        match self.inner.backend {
            Backend::Sqlite(_) => KvBackend::Sqlite,
            Backend::Redis(_) => KvBackend::Redis,
        }
    }

    fn now(&self) -> u64 {
        self.inner.clock.now_secs()
    }

    /// `get(key)` / `getWithMetadata(key)`: the live entry at `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        limits::check_key(KvOp::Get, key)?;
        let now = self.now();
        let result = match &self.inner.backend {
            Backend::Sqlite(ns) => ns.get(key, now).await,
            Backend::Redis(ns) => ns.get(key, now).await,
        };
        result.map_err(|e| e.during(KvOp::Get))
    }

    /// `get([keys])` / `getWithMetadata([keys])`: 1 to 100 keys, each with
    /// its entry or `None`, in the order asked, each key once (the JS side
    /// builds its `Map` from this).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<(String, Option<Entry>)>, KvError> {
        limits::check_bulk_count(keys.len())?;
        let mut unique: Vec<String> = Vec::with_capacity(keys.len());
        for key in keys {
            limits::check_bulk_key(key)?;
            if !unique.contains(key) {
                unique.push(key.clone());
            }
        }
        let now = self.now();
        let entries = match &self.inner.backend {
            Backend::Sqlite(ns) => ns.get_many(unique.clone(), now).await,
            Backend::Redis(ns) => ns.get_many(&unique, now).await,
        }
        .map_err(|e| e.during(KvOp::GetBulk))?;
        let total = entries
            .iter()
            .flatten()
            .map(|entry| entry.value.len())
            .sum();
        limits::check_bulk_size(total)?;
        Ok(unique.into_iter().zip(entries).collect())
    }

    /// `put(key, value, options)`: resolves once the entry is stored.
    pub async fn put(&self, key: &str, value: Vec<u8>, options: PutOptions) -> Result<(), KvError> {
        limits::check_key(KvOp::Put, key)?;
        let expiration =
            limits::expiration(self.now(), options.expiration, options.expiration_ttl)?;
        if let Some(metadata) = &options.metadata {
            limits::check_metadata(metadata)?;
        }
        limits::check_value(&value)?;
        let result = match &self.inner.backend {
            Backend::Sqlite(ns) => {
                ns.put(key.to_owned(), value, options.metadata, expiration)
                    .await
            }
            Backend::Redis(ns) => ns.put(key, value, options.metadata, expiration).await,
        };
        result.map_err(|e| e.during(KvOp::Put))
    }

    /// `delete(key)`: resolves once the key is gone (deleting a missing key
    /// succeeds).
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        limits::check_key(KvOp::Delete, key)?;
        let result = match &self.inner.backend {
            Backend::Sqlite(ns) => ns.delete(key.to_owned()).await,
            Backend::Redis(ns) => ns.delete(key).await,
        };
        result.map_err(|e| e.during(KvOp::Delete))
    }

    /// `list(options)`: one page of live keys in byte order.
    pub async fn list(&self, options: ListOptions) -> Result<ListResult, KvError> {
        let op = KvOp::List;
        let limit = limits::list_limit(options.limit)?;
        let prefix = options.prefix.unwrap_or_default();
        limits::check_key_length(op, &prefix)?;
        // A cursor that fails its check (forged, tampered, or another
        // namespace's) lists from the start, as miniflare does with a
        // cursor it cannot read: it reveals nothing, since only this
        // namespace's keys are ever listed here.
        let after = options
            .cursor
            .as_deref()
            .filter(|cursor| !cursor.is_empty())
            .and_then(|cursor| self.inner.cursor_key.open(&self.inner.scope, cursor));
        let now = self.now();
        let page = match &self.inner.backend {
            Backend::Sqlite(ns) => ns.list(prefix, after, limit, now).await,
            Backend::Redis(ns) => ns.list(&prefix, after, limit, now).await,
        }
        .map_err(|e| e.during(op))?;
        let cursor = match (page.more, page.keys.last()) {
            (true, Some(last)) => Some(
                self.inner
                    .cursor_key
                    .seal(&self.inner.scope, last.name.as_bytes()),
            ),
            _ => None,
        };
        Ok(ListResult {
            list_complete: cursor.is_none(),
            keys: page.keys,
            cursor,
        })
    }
}

/// The smallest byte string greater than every string starting with
/// `prefix`, or `None` when there is none (an empty prefix, or all 0xFF,
/// which UTF-8 never is).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A stored key back as text. Keys go in as `&str`, so one that is not
/// UTF-8 was not written through this API.
pub(crate) fn key_text(key: Vec<u8>) -> Result<String, BackendError> {
    String::from_utf8(key).map_err(|_| BackendError::Internal("a stored key is not UTF-8".into()))
}
