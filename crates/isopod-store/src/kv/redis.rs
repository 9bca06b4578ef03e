//! KV on Redis.
//!
//! Keys: every namespace owns the keys starting with
//! `isopod:kv:<len>:<name>:`, where `<len>` is the byte length of `<name>`;
//! with the length in front, no name's prefix is a prefix of another's, so
//! no app key (always appended after its namespace's prefix) can spell a
//! key of another namespace. Under that prefix:
//! - `k:<key>`: a hash per entry, field `v` the value, `m` the metadata
//!   (absent when none), `e` the expiration in seconds ("" when none, so
//!   the field always exists and reading `m`/`e` alone tells a live entry
//!   from a missing one without fetching the value). An entry with an
//!   expiration has it as its Redis expiry too (`EXPIREAT`), so Redis
//!   reclaims it by itself.
//! - `i`: a sorted set of the namespace's key names, all scored 0, so
//!   `ZRANGEBYLEX` walks them in byte order: this is what makes `list`
//!   ordered and resumable (SCAN is neither). A name whose hash has expired
//!   stays in the set until a `list` meets it and removes it (atomically,
//!   only if the hash is still missing, so a concurrent `put` is never
//!   undone).
//! - A put or delete changes hash and set in one MULTI/EXEC.
//!
//! Reads also filter by expiration against the store's clock, so an entry
//! is gone at its expiration second even before Redis expires it.
//!
//! Connection: one multiplexed [`ConnectionManager`] per store, reconnecting
//! with backoff by itself, driven by a runtime on a thread of its own (so
//! it never depends on a caller's runtime being polled). Every call runs
//! under [`KvOptions::redis_timeout`]: an unreachable Redis fails each call
//! with [`KvError::Unavailable`](super::KvError::Unavailable) within that
//! time, and calls never wait on one another.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult};
use tokio::sync::oneshot;

use super::error::BackendError;
use super::{key_text, prefix_end, CursorKey, Entry, KvNamespace, KvOptions, ListKey, Page};
use crate::clock::Clock;
use crate::names;
use crate::storage_error::StorageError;

/// The prefix of every key this store writes.
const ROOT: &str = "isopod:kv:";
/// A set of every namespace name opened, for the admin API.
const NAMES_KEY: &str = "isopod:kv-namespaces";
/// Keys deleted per command when a namespace is deleted.
const DELETE_CHUNK: usize = 500;

/// Removes index members whose entry hash is gone, atomically per member,
/// so a put racing the removal keeps its member. KEYS[1] is the index,
/// KEYS[2] the entries' key prefix, ARGV the names.
const PRUNE_SCRIPT: &str = "
for _, name in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[2] .. name) == 0 then
    redis.call('ZREM', KEYS[1], name)
  end
end
return 0";

/// A Redis server holding KV namespaces. Cheap to clone.
#[derive(Clone)]
pub struct RedisKvStore {
    conn: Arc<Conn>,
    runtime: Arc<RuntimeThread>,
    clock: Clock,
    cursor_key: CursorKey,
}

impl std::fmt::Debug for RedisKvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKvStore")
            .field("addr", &self.conn.addr)
            .finish()
    }
}

/// The connection, shared by every task of the store.
struct Conn {
    client: Client,
    /// Where Redis is, for messages (never the URL: it may hold a password).
    addr: String,
    timeout: Duration,
    /// Made on first use, inside the store's runtime.
    manager: Mutex<Option<ConnectionManager>>,
}

/// The thread running the store's runtime; dropping it stops the thread.
struct RuntimeThread {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // Never join from the runtime's own thread (it would wait on
            // itself); it ends by itself once stopped.
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl RedisKvStore {
    /// A store on the Redis at `url` (`redis://[user:password@]host:port[/db]`).
    /// Connects lazily: an unreachable Redis fails calls, not this.
    pub fn new(
        url: &str,
        options: &KvOptions,
        cursor_key: CursorKey,
    ) -> Result<RedisKvStore, StorageError> {
        let client = Client::open(url)
            .map_err(|e| StorageError::Redis(format!("invalid Redis URL: {e}")))?;
        let addr = client.get_connection_info().addr().to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StorageError::Redis(format!("cannot start its runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("isopod-kv-redis".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| StorageError::Redis(format!("cannot start its thread: {e}")))?;
        Ok(RedisKvStore {
            conn: Arc::new(Conn {
                client,
                addr,
                timeout: options.redis_timeout,
                manager: Mutex::new(None),
            }),
            runtime: Arc::new(RuntimeThread {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            }),
            clock: options.clock.clone(),
            cursor_key,
        })
    }

    /// Where the server is (host:port).
    pub fn addr(&self) -> &str {
        &self.conn.addr
    }

    /// The namespace `name`. Does not wait for Redis: the name is recorded
    /// for [`RedisKvStore::namespaces`] in the background.
    pub fn namespace(&self, name: &str) -> Result<KvNamespace, StorageError> {
        names::validate("KV namespace", name)?;
        let ns = RedisNamespace {
            conn: self.conn.clone(),
            runtime: self.runtime.clone(),
            prefix: namespace_prefix(name).into_bytes(),
        };
        // Best effort: a namespace missed here (Redis down) is still found
        // by its index once it holds keys.
        let record = ns.clone();
        let name_owned = name.to_owned();
        drop(self.runtime.handle.spawn(async move {
            let _ = record
                .call(move |mut con| async move {
                    redis::cmd("SADD")
                        .arg(NAMES_KEY)
                        .arg(&name_owned)
                        .query_async::<()>(&mut con)
                        .await
                })
                .await;
        }));
        Ok(KvNamespace::new(
            name,
            self.clock.clone(),
            self.cursor_key.clone(),
            super::Backend::Redis(ns),
        ))
    }

    /// The names of every namespace opened or holding keys, sorted.
    pub async fn namespaces(&self) -> Result<Vec<String>, StorageError> {
        let ns = self.admin();
        let mut names = ns
            .call(|mut con| async move {
                let mut names: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(NAMES_KEY)
                    .query_async(&mut con)
                    .await?;
                for index in scan(&mut con, &format!("{ROOT}*:i")).await? {
                    if let Some(name) = name_of_index(&index) {
                        names.push(name);
                    }
                }
                Ok(names)
            })
            .await
            .map_err(|e| StorageError::Redis(e.detail()))?;
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Deletes namespace `name` and all its keys; false if it had none and
    /// was never opened.
    pub async fn delete_namespace(&self, name: &str) -> Result<bool, StorageError> {
        names::validate("KV namespace", name)?;
        let pattern = format!("{}*", namespace_prefix(name));
        let name = name.to_owned();
        self.admin()
            .call(move |mut con| async move {
                let keys = scan(&mut con, &pattern).await?;
                for chunk in keys.chunks(DELETE_CHUNK) {
                    redis::cmd("DEL")
                        .arg(chunk)
                        .query_async::<()>(&mut con)
                        .await?;
                }
                let recorded: u64 = redis::cmd("SREM")
                    .arg(NAMES_KEY)
                    .arg(&name)
                    .query_async(&mut con)
                    .await?;
                Ok(recorded > 0 || !keys.is_empty())
            })
            .await
            .map_err(|e| StorageError::Redis(e.detail()))
    }

    /// A handle for calls that belong to no namespace.
    fn admin(&self) -> RedisNamespace {
        RedisNamespace {
            conn: self.conn.clone(),
            runtime: self.runtime.clone(),
            prefix: Vec::new(),
        }
    }
}

/// `isopod:kv:<len>:<name>:`.
fn namespace_prefix(name: &str) -> String {
    format!("{ROOT}{}:{name}:", name.len())
}

/// The namespace an index key `isopod:kv:<len>:<name>:i` belongs to.
fn name_of_index(key: &[u8]) -> Option<String> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(ROOT)?;
    let (len, rest) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let name = rest.get(..len)?;
    (rest.get(len..)? == ":i").then(|| name.to_owned())
}

/// Every key matching `pattern` (SCAN, which never blocks the server).
async fn scan(con: &mut ConnectionManager, pattern: &str) -> RedisResult<Vec<Vec<u8>>> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// One namespace on Redis.
#[derive(Clone)]
pub(crate) struct RedisNamespace {
    conn: Arc<Conn>,
    runtime: Arc<RuntimeThread>,
    /// `isopod:kv:<len>:<name>:`.
    prefix: Vec<u8>,
}

impl RedisNamespace {
    fn entry_key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + 2 + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(b"k:");
        full.extend_from_slice(key);
        full
    }

    fn entries_prefix(&self) -> Vec<u8> {
        self.entry_key(b"")
    }

    fn index_key(&self) -> Vec<u8> {
        let mut full = self.prefix.clone();
        full.push(b'i');
        full
    }

    /// Runs `body` on the store's runtime under the call timeout.
    async fn call<T, F, Fut>(&self, body: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
    {
        let conn = self.conn.clone();
        let task = self.runtime.handle.spawn(async move {
            let manager = conn.manager()?;
            match tokio::time::timeout(conn.timeout, body(manager)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(conn.classify(e)),
                Err(_) => Err(BackendError::Unavailable(format!(
                    "no answer from Redis at {} within {} ms",
                    conn.addr,
                    conn.timeout.as_millis()
                ))),
            }
        });
        task.await
            .map_err(|e| BackendError::Internal(format!("a Redis call failed to run: {e}")))?
    }

    pub(crate) async fn get(&self, key: &str, now: u64) -> Result<Option<Entry>, BackendError> {
        let entry_key = self.entry_key(key.as_bytes());
        let fields: Vec<Option<Vec<u8>>> = self
            .call(move |mut con| async move {
                redis::cmd("HMGET")
                    .arg(entry_key)
                    .arg(&["v", "m", "e"])
                    .query_async(&mut con)
                    .await
            })
            .await?;
        entry_from_fields(fields, now)
    }

    pub(crate) async fn get_many(
        &self,
        keys: &[String],
        now: u64,
    ) -> Result<Vec<Option<Entry>>, BackendError> {
        let entry_keys: Vec<Vec<u8>> = keys.iter().map(|k| self.entry_key(k.as_bytes())).collect();
        let all: Vec<Vec<Option<Vec<u8>>>> = self
            .call(move |mut con| async move {
                let mut pipe = redis::pipe();
                for entry_key in entry_keys {
                    pipe.cmd("HMGET").arg(entry_key).arg(&["v", "m", "e"]);
                }
                pipe.query_async(&mut con).await
            })
            .await?;
        all.into_iter()
            .map(|fields| entry_from_fields(fields, now))
            .collect()
    }

    pub(crate) async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        metadata: Option<String>,
        expiration: Option<u64>,
    ) -> Result<(), BackendError> {
        let entry_key = self.entry_key(key.as_bytes());
        let index_key = self.index_key();
        let name = key.as_bytes().to_vec();
        self.call(move |mut con| async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("DEL").arg(&entry_key).ignore();
            let hset = pipe.cmd("HSET").arg(&entry_key).arg("v").arg(value);
            if let Some(metadata) = metadata {
                hset.arg("m").arg(metadata);
            }
            hset.arg("e")
                .arg(expiration.map(|e| e.to_string()).unwrap_or_default())
                .ignore();
            if let Some(at) = expiration {
                pipe.cmd("EXPIREAT").arg(&entry_key).arg(at).ignore();
            }
            pipe.cmd("ZADD").arg(index_key).arg(0).arg(name).ignore();
            pipe.query_async::<()>(&mut con).await
        })
        .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let entry_key = self.entry_key(key.as_bytes());
        let index_key = self.index_key();
        let name = key.as_bytes().to_vec();
        self.call(move |mut con| async move {
            redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(entry_key)
                .ignore()
                .cmd("ZREM")
                .arg(index_key)
                .arg(name)
                .ignore()
                .query_async::<()>(&mut con)
                .await
        })
        .await
    }

    pub(crate) async fn list(
        &self,
        prefix: &str,
        after: Option<Vec<u8>>,
        limit: usize,
        now: u64,
    ) -> Result<Page, BackendError> {
        let index_key = self.index_key();
        let entries_prefix = self.entries_prefix();
        let prefix = prefix.as_bytes().to_vec();
        // Lexicographic bounds: inclusive "[x", exclusive "(x", or "+".
        let bound = |open: u8, key: &[u8]| {
            let mut b = Vec::with_capacity(key.len() + 1);
            b.push(open);
            b.extend_from_slice(key);
            b
        };
        let mut min = match after {
            Some(after) if after >= prefix => bound(b'(', &after),
            _ => bound(b'[', &prefix),
        };
        let max = prefix_end(&prefix).map_or_else(|| b"+".to_vec(), |end| bound(b'(', &end));
        let found: Vec<(Vec<u8>, Option<String>, Option<u64>)> = self
            .call(move |mut con| async move {
                // One past the page tells whether another page follows.
                let want = limit + 1;
                let mut found = Vec::with_capacity(want.min(1024));
                loop {
                    let names: Vec<Vec<u8>> = redis::cmd("ZRANGEBYLEX")
                        .arg(&index_key)
                        .arg(&min)
                        .arg(&max)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(want - found.len())
                        .query_async(&mut con)
                        .await?;
                    let Some(last) = names.last() else {
                        return Ok(found);
                    };
                    min = bound(b'(', last);
                    let mut pipe = redis::pipe();
                    for name in &names {
                        let mut entry_key = entries_prefix.clone();
                        entry_key.extend_from_slice(name);
                        pipe.cmd("HMGET").arg(entry_key).arg(&["m", "e"]);
                    }
                    let fields: Vec<(Option<String>, Option<String>)> =
                        pipe.query_async(&mut con).await?;
                    let mut gone = Vec::new();
                    for (name, (metadata, expiration)) in names.into_iter().zip(fields) {
                        let Some(expiration) = expiration else {
                            // The hash is gone (Redis expired it): prune.
                            gone.push(name);
                            continue;
                        };
                        let expiration = expiration.parse::<u64>().ok();
                        if expiration.is_some_and(|at| at <= now) {
                            continue;
                        }
                        found.push((name, metadata, expiration));
                    }
                    if !gone.is_empty() {
                        redis::cmd("EVAL")
                            .arg(PRUNE_SCRIPT)
                            .arg(2)
                            .arg(&index_key)
                            .arg(&entries_prefix)
                            .arg(gone)
                            .query_async::<()>(&mut con)
                            .await?;
                    }
                    if found.len() >= want {
                        return Ok(found);
                    }
                }
            })
            .await?;
        let more = found.len() > limit;
        let keys = found
            .into_iter()
            .take(limit)
            .map(|(name, metadata, expiration)| {
                Ok(ListKey {
                    name: key_text(name)?,
                    expiration,
                    metadata,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(Page { keys, more })
    }
}

/// An entry from `HMGET v m e`, if live at `now`.
fn entry_from_fields(
    fields: Vec<Option<Vec<u8>>>,
    now: u64,
) -> Result<Option<Entry>, BackendError> {
    let mut fields = fields.into_iter();
    let (Some(value), metadata, expiration) = (
        fields.next().flatten(),
        fields.next().flatten(),
        fields.next().flatten(),
    ) else {
        return Ok(None);
    };
    let expiration = expiration
        .filter(|e| !e.is_empty())
        .map(|e| {
            std::str::from_utf8(&e)
                .ok()
                .and_then(|e| e.parse::<u64>().ok())
                .ok_or_else(|| BackendError::Internal("a stored expiration is not a number".into()))
        })
        .transpose()?;
    if expiration.is_some_and(|at| at <= now) {
        return Ok(None);
    }
    let metadata = metadata
        .map(|m| {
            String::from_utf8(m)
                .map_err(|_| BackendError::Internal("stored metadata is not UTF-8".into()))
        })
        .transpose()?;
    Ok(Some(Entry {
        value,
        metadata,
        expiration,
    }))
}

impl Conn {
    /// The shared connection manager, made on first use (it must be made
    /// inside the store's runtime, whose tasks drive it).
    fn manager(&self) -> Result<ConnectionManager, BackendError> {
        let mut manager = self.manager.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(manager) = &*manager {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_millis(500));
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| self.classify(e))?;
        *manager = Some(made.clone());
        Ok(made)
    }

    /// Unreachable (the app may retry later) or failed.
    fn classify(&self, e: RedisError) -> BackendError {
        let detail = format!("Redis at {}: {e}", self.addr);
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            BackendError::Unavailable(detail)
        } else {
            BackendError::Internal(detail)
        }
    }
}
