//! KV on SQLite: every namespace in one file, `DIR/kv.sqlite3`.
//!
//! One file rather than one per namespace: a platform has many small
//! namespaces, and one file gives one writer thread, one write-ahead log
//! and one fsync per batch for all of them (group commit works across
//! tenants), with no file handle per namespace. Namespaces are kept apart
//! by an integer id on every row; a namespace is a row of `namespaces`, and
//! deleting it cascades to its entries.
//!
//! Threads:
//! - Writes go to one writer thread through a queue. It takes every write
//!   waiting (up to a budget), commits them in one transaction, then
//!   answers each: a `put` resolves once its transaction is durable
//!   (`synchronous=FULL`). Between batches it purges expired entries every
//!   [`KvOptions::purge_interval`].
//! - Reads run on tokio's blocking pool, on pooled read-only connections:
//!   WAL lets them proceed while the writer commits.
//!
//! Expired entries are filtered out by every read (`expiration > now`), so
//! purging is only about space.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _, TransactionBehavior};
use tokio::sync::oneshot;

use super::error::BackendError;
use super::{key_text, prefix_end, CursorKey, Entry, KvNamespace, KvOptions, ListKey, Page};
use crate::clock::Clock;
use crate::names;
use crate::storage_error::{StorageContext as _, StorageError};

/// The file's name inside the data directory.
pub const KV_FILE_NAME: &str = "kv.sqlite3";

/// How long a connection waits for another's write lock (the admin calls
/// write outside the writer thread).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The most writes one transaction commits.
const MAX_BATCH_OPS: usize = 512;
/// The most value bytes one transaction commits; a single larger value is
/// still written, alone.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Rows deleted per purge transaction, so a large purge never holds the
/// write lock for long.
const PURGE_CHUNK: usize = 1000;
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// Schema migrations, as in the registry: N+1 takes `user_version` N to
/// N+1, released ones are never edited.
///
/// `value` is the last column: SQLite reads a row's columns in order, so
/// listing (key, expiration, metadata) never walks a large value's
/// overflow pages.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE namespaces (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE entries (
        ns INTEGER NOT NULL REFERENCES namespaces(id) ON DELETE CASCADE,
        key BLOB NOT NULL,
        expiration INTEGER,
        metadata TEXT,
        value BLOB NOT NULL,
        PRIMARY KEY (ns, key)
    );
    CREATE INDEX entries_by_expiration ON entries(expiration) WHERE expiration IS NOT NULL;
"];

/// A write for the writer thread.
enum Op {
    Put {
        ns: i64,
        key: String,
        value: Vec<u8>,
        metadata: Option<String>,
        expiration: Option<u64>,
    },
    Delete {
        ns: i64,
        key: String,
    },
    /// Deletes entries expired at `now`; answers how many.
    Purge {
        now: u64,
    },
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<u64, BackendError>>,
}

/// The KV SQLite file and its writer thread. Cheap to clone.
#[derive(Clone)]
pub struct SqliteKvStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SqliteKvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKvStore")
            .field("path", &self.shared.path)
            .finish()
    }
}

struct Shared {
    path: PathBuf,
    /// `Some` until drop; taking it ends the writer thread.
    writer: Option<mpsc::Sender<Job>>,
    writer_thread: Option<thread::JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
    clock: Clock,
    cursor_key: CursorKey,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has answered every
        // write already queued; joining means a store reopened after this
        // finds the file closed.
        drop(self.writer.take());
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteKvStore {
    /// Opens (creating if needed) `dir/kv.sqlite3` and starts its writer
    /// thread. Cursors are signed with `cursor_key`.
    pub fn open(
        dir: &Path,
        options: &KvOptions,
        cursor_key: CursorKey,
    ) -> Result<SqliteKvStore, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            context: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(KV_FILE_NAME);
        crate::sqlite_file::create_private(&path)?;
        let mut conn = crate::sqlite_file::open_durable(&path, "opening the KV store")?;
        crate::sqlite_file::migrate(&mut conn, MIGRATIONS, "migrating the KV store")?;

        let (tx, rx) = mpsc::channel();
        let clock = options.clock.clone();
        let purge_interval = options.purge_interval;
        let writer_thread = thread::Builder::new()
            .name("isopod-kv-writer".into())
            .spawn(move || writer_loop(conn, rx, purge_interval, clock))
            .map_err(|source| StorageError::Io {
                context: "starting the writer thread for",
                path: path.clone(),
                source,
            })?;
        Ok(SqliteKvStore {
            shared: Arc::new(Shared {
                path,
                writer: Some(tx),
                writer_thread: Some(writer_thread),
                readers: Mutex::new(Vec::new()),
                clock: options.clock.clone(),
                cursor_key,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The namespace `name`, created if new. Blocks briefly on a small
    /// write the first time a name is seen.
    pub fn namespace(&self, name: &str) -> Result<KvNamespace, StorageError> {
        names::validate("KV namespace", name)?;
        let id = self.shared.with_reader(|conn| {
            conn.execute(
                "INSERT INTO namespaces (name, created_at_ms) VALUES (?1, ?2)
                 ON CONFLICT (name) DO NOTHING",
                params![name, now_ms_i64(&self.shared.clock)],
            )?;
            conn.query_row("SELECT id FROM namespaces WHERE name = ?1", [name], |row| {
                row.get::<_, i64>(0)
            })
        });
        let id = id.storage_context("creating a KV namespace")?;
        Ok(KvNamespace::new(
            name,
            self.shared.clock.clone(),
            self.shared.cursor_key.clone(),
            super::Backend::Sqlite(SqliteNamespace {
                shared: self.shared.clone(),
                id,
            }),
        ))
    }

    /// The names of every namespace, sorted.
    pub fn namespaces(&self) -> Result<Vec<String>, StorageError> {
        self.shared
            .with_reader(|conn| {
                let mut stmt = conn.prepare("SELECT name FROM namespaces ORDER BY name")?;
                let names = stmt.query_map([], |row| row.get(0))?;
                names.collect::<Result<Vec<String>, _>>()
            })
            .storage_context("listing KV namespaces")
    }

    /// Deletes namespace `name` and every entry in it; false if there was
    /// none. Handles still held on it fail their writes from then on.
    pub fn delete_namespace(&self, name: &str) -> Result<bool, StorageError> {
        self.shared
            .with_reader(|conn| conn.execute("DELETE FROM namespaces WHERE name = ?1", [name]))
            .map(|deleted| deleted > 0)
            .storage_context("deleting a KV namespace")
    }

    /// Deletes every entry expired by now, at once rather than at the next
    /// periodic purge; answers how many.
    pub async fn purge_expired(&self) -> Result<u64, StorageError> {
        let now = self.shared.clock.now_secs();
        self.shared
            .write(Op::Purge { now })
            .await
            .map_err(|e| StorageError::Backend(e.detail()))
    }
}

/// One namespace of the SQLite store.
#[derive(Clone)]
pub(crate) struct SqliteNamespace {
    shared: Arc<Shared>,
    id: i64,
}

impl SqliteNamespace {
    pub(crate) async fn get(&self, key: &str, now: u64) -> Result<Option<Entry>, BackendError> {
        let (ns, key) = (self.id, key.to_owned());
        self.shared
            .read(move |conn| {
                conn.query_row(
                    "SELECT value, metadata, expiration FROM entries
                     WHERE ns = ?1 AND key = ?2 AND (expiration IS NULL OR expiration > ?3)",
                    params![ns, key.as_bytes(), sql_int(now)],
                    entry_from_row,
                )
                .optional()
                .map_err(BackendError::from)
            })
            .await
    }

    pub(crate) async fn get_many(
        &self,
        keys: Vec<String>,
        now: u64,
    ) -> Result<Vec<Option<Entry>>, BackendError> {
        let ns = self.id;
        self.shared
            .read(move |conn| {
                // One read transaction: the entries are of one moment.
                let tx = conn.unchecked_transaction()?;
                let mut stmt = tx.prepare_cached(
                    "SELECT value, metadata, expiration FROM entries
                     WHERE ns = ?1 AND key = ?2 AND (expiration IS NULL OR expiration > ?3)",
                )?;
                let entries = keys
                    .iter()
                    .map(|key| {
                        stmt.query_row(params![ns, key.as_bytes(), sql_int(now)], entry_from_row)
                            .optional()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                drop(stmt);
                tx.finish()?;
                Ok(entries)
            })
            .await
    }

    pub(crate) async fn put(
        &self,
        key: String,
        value: Vec<u8>,
        metadata: Option<String>,
        expiration: Option<u64>,
    ) -> Result<(), BackendError> {
        self.shared
            .write(Op::Put {
                ns: self.id,
                key,
                value,
                metadata,
                expiration,
            })
            .await
            .map(drop)
    }

    pub(crate) async fn delete(&self, key: String) -> Result<(), BackendError> {
        self.shared
            .write(Op::Delete { ns: self.id, key })
            .await
            .map(drop)
    }

    pub(crate) async fn list(
        &self,
        prefix: String,
        after: Option<Vec<u8>>,
        limit: usize,
        now: u64,
    ) -> Result<Page, BackendError> {
        let ns = self.id;
        self.shared
            .read(move |conn| {
                let end = prefix_end(prefix.as_bytes());
                // One row past the page tells whether another page follows.
                let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
                let mut stmt = conn.prepare_cached(
                    "SELECT key, expiration, metadata FROM entries
                     WHERE ns = ?1 AND key >= ?2
                       AND (?3 IS NULL OR key > ?3)
                       AND (?4 IS NULL OR key < ?4)
                       AND (expiration IS NULL OR expiration > ?5)
                     ORDER BY key LIMIT ?6",
                )?;
                let rows = stmt.query_map(
                    params![ns, prefix.as_bytes(), after, end, sql_int(now), fetch],
                    |row| {
                        Ok((
                            row.get::<_, Vec<u8>>(0)?,
                            row.get::<_, Option<i64>>(1)?,
                            row.get::<_, Option<String>>(2)?,
                        ))
                    },
                )?;
                let mut keys = Vec::with_capacity(limit.min(1024));
                let mut more = false;
                for row in rows {
                    let (key, expiration, metadata) = row?;
                    if keys.len() == limit {
                        more = true;
                        break;
                    }
                    keys.push(ListKey {
                        name: key_text(key)?,
                        expiration: expiration.and_then(|e| u64::try_from(e).ok()),
                        metadata,
                    });
                }
                Ok(Page { keys, more })
            })
            .await
    }
}

impl Shared {
    /// Runs `f` on a pooled connection, on this thread.
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, rusqlite::Error> {
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&self.path)?,
        };
        let result = f(&mut conn);
        // A connection left inside a transaction (by an error mid-way) is
        // dropped rather than pooled.
        if conn.is_autocommit() {
            let mut readers = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
            if readers.len() < MAX_IDLE_READERS {
                readers.push(conn);
            }
        }
        result
    }

    /// Runs `f` on a pooled connection on tokio's blocking pool.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut outcome = None;
            let opened = shared.with_reader(|conn| {
                outcome = Some(f(conn));
                Ok(())
            });
            match (opened, outcome) {
                (_, Some(result)) => result,
                (Err(e), None) => Err(e.into()),
                (Ok(()), None) => Err(BackendError::Internal("a read did not run".into())),
            }
        })
        .await
        .map_err(|e| BackendError::Internal(format!("a KV read panicked: {e}")))?
    }

    /// Queues a write and waits for its transaction to commit.
    async fn write(&self, op: Op) -> Result<u64, BackendError> {
        let (reply, answer) = oneshot::channel();
        let gone = || BackendError::Internal("the KV writer thread is gone".into());
        self.writer
            .as_ref()
            .ok_or_else(gone)?
            .send(Job { op, reply })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    // Read-write, not read-only: the admin calls (create and delete
    // namespace) write through pooled connections too.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> Result<Entry, rusqlite::Error> {
    Ok(Entry {
        value: row.get(0)?,
        metadata: row.get(1)?,
        expiration: row
            .get::<_, Option<i64>>(2)?
            .and_then(|e| u64::try_from(e).ok()),
    })
}

/// Seconds as SQLite's integer (far-future times saturate).
fn sql_int(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn now_ms_i64(clock: &Clock) -> i64 {
    i64::try_from(clock.now_ms()).unwrap_or(i64::MAX)
}

fn writer_loop(
    mut conn: Connection,
    jobs: mpsc::Receiver<Job>,
    purge_every: Duration,
    clock: Clock,
) {
    let mut next_purge = Instant::now() + purge_every;
    loop {
        let wait = next_purge.saturating_duration_since(Instant::now());
        let first = match jobs.recv_timeout(wait) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A failed periodic purge is retried at the next one; the
                // entries stay hidden from reads meanwhile.
                let _ = purge(&mut conn, clock.now_secs());
                next_purge = Instant::now() + purge_every;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = Vec::new();
        let mut bytes = first.op.bytes();
        batch.push(first);
        while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += job.op.bytes();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch);
    }
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Put { value, .. } => value.len(),
            _ => 0,
        }
    }
}

/// Commits the puts and deletes of `batch` in one transaction, in queue
/// order; a purge runs on its own at its place in the queue.
fn run_batch(conn: &mut Connection, batch: Vec<Job>) {
    let mut pending: Vec<Job> = Vec::new();
    for job in batch {
        if let Op::Purge { now } = job.op {
            commit(conn, std::mem::take(&mut pending));
            let _ = job.reply.send(purge(conn, now));
        } else {
            pending.push(job);
        }
    }
    commit(conn, pending);
}

/// Applies puts and deletes in one transaction and answers each once it is
/// committed (or with the error that stopped it).
fn commit(conn: &mut Connection, jobs: Vec<Job>) {
    if jobs.is_empty() {
        return;
    }
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            for job in jobs {
                let _ = job
                    .reply
                    .send(Err(BackendError::Internal(format!("SQLite: {e}"))));
            }
            return;
        }
    };
    // A failed statement rolls back only itself; the others stand.
    let results: Vec<Result<u64, BackendError>> = jobs
        .iter()
        .map(|job| apply(&tx, &job.op).map_err(BackendError::from))
        .collect();
    let committed = tx.commit();
    for (job, result) in jobs.into_iter().zip(results) {
        let answer = match &committed {
            Ok(()) => result,
            Err(e) => Err(BackendError::Internal(format!("SQLite commit: {e}"))),
        };
        let _ = job.reply.send(answer);
    }
}

fn apply(tx: &rusqlite::Transaction<'_>, op: &Op) -> Result<u64, rusqlite::Error> {
    match op {
        Op::Put {
            ns,
            key,
            value,
            metadata,
            expiration,
        } => {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO entries (ns, key, expiration, metadata, value)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (ns, key) DO UPDATE SET
                    expiration = excluded.expiration,
                    metadata = excluded.metadata,
                    value = excluded.value",
            )?;
            stmt.execute(params![
                ns,
                key.as_bytes(),
                expiration.map(sql_int),
                metadata,
                value
            ])
            .map(|n| n as u64)
        }
        Op::Delete { ns, key } => tx
            .prepare_cached("DELETE FROM entries WHERE ns = ?1 AND key = ?2")?
            .execute(params![ns, key.as_bytes()])
            .map(|n| n as u64),
        Op::Purge { .. } => Ok(0),
    }
}

/// Deletes entries expired at `now`, a chunk per transaction.
fn purge(conn: &mut Connection, now: u64) -> Result<u64, BackendError> {
    let mut total = 0u64;
    loop {
        let deleted = conn.execute(
            "DELETE FROM entries WHERE rowid IN
                (SELECT rowid FROM entries WHERE expiration <= ?1 LIMIT ?2)",
            params![sql_int(now), PURGE_CHUNK as i64],
        )?;
        total += deleted as u64;
        if deleted < PURGE_CHUNK {
            return Ok(total);
        }
    }
}
