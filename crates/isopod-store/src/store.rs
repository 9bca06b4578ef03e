//! The handle on the store's directory and database: opening, checking,
//! sharing between threads, flushing.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use crate::error::{SqliteContext, StoreError};
use crate::schema;

/// The database's file name inside the store's directory.
pub const DB_FILE_NAME: &str = "registry.sqlite3";

/// How long a write waits for another connection's write (another process
/// on the same file) before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How a [`Store`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// How many versions of each app are kept, newest first; older ones are
    /// pruned when a new version is recorded. The active version is kept
    /// even beyond this, so 0 behaves as 1.
    pub keep_versions: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { keep_versions: 20 }
    }
}

/// The persistent store: one SQLite database in one directory.
///
/// `Send + Sync`: methods take `&self` and serialise on one connection.
/// Operations are short (single-row writes, a few small reads), so one
/// connection is not a bottleneck for an admin API.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    conn: Mutex<Connection>,
    pub(crate) options: StoreOptions,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// Creates `dir` if it is missing and checks that it can be written to,
    /// so a read-only directory is reported here, naming it, rather than at
    /// the first deploy. Brings the schema up to date.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let not_writable = |reason: String| StoreError::NotWritable {
            dir: dir.to_path_buf(),
            reason,
        };
        fs::create_dir_all(dir).map_err(|e| not_writable(format!("cannot create it: {e}")))?;
        probe_writable(dir).map_err(not_writable)?;

        let db_path = dir.join(DB_FILE_NAME);
        create_private(&db_path)
            .map_err(|e| not_writable(format!("cannot create {}: {e}", db_path.display())))?;

        const CONTEXT: &str = "opening the registry";
        let mut conn = Connection::open(&db_path).context(CONTEXT)?;
        conn.busy_timeout(BUSY_TIMEOUT).context(CONTEXT)?;
        // WAL: readers do not block the writer. It is a request, not a
        // guarantee (some file systems cannot do it); durability does not
        // depend on it, since FULL syncs in every journal mode.
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .context(CONTEXT)?;
        // FULL: a committed deploy survives power loss, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL")
            .context(CONTEXT)?;
        conn.pragma_update(None, "foreign_keys", true)
            .context(CONTEXT)?;
        schema::migrate(&mut conn, &db_path)?;

        Ok(Store {
            dir: dir.to_path_buf(),
            conn: Mutex::new(conn),
            options,
        })
    }

    /// The directory the store was opened on.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves everything in the write-ahead log into the main database file
    /// and empties the log, so the file alone holds the state. Call at
    /// shutdown.
    pub fn flush(&self) -> Result<(), StoreError> {
        // The row says whether the checkpoint was complete; an incomplete
        // one (another process reading) loses nothing, the log stays.
        self.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .context("checkpointing the write-ahead log")
    }

    /// The connection, for one operation.
    ///
    /// A panic while the lock was held cannot have left a half-applied
    /// write: every write is a transaction, and a transaction dropped
    /// during unwinding rolls back. So poisoning is ignored.
    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Creates and removes a file in `dir`, to learn now whether writes there
/// will work.
fn probe_writable(dir: &Path) -> Result<(), String> {
    // Unique per process and call, so concurrent opens never share a probe.
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let probe = dir.join(format!(
        ".isopod-store-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .and_then(|mut file| file.write_all(b"probe"));
    if let Err(e) = written {
        // The file may exist if only the write failed.
        let _ = fs::remove_file(&probe);
        return Err(format!("cannot create a file in it: {e}"));
    }
    fs::remove_file(&probe).map_err(|e| format!("cannot remove a file from it: {e}"))
}

/// Creates `path` empty, owner-only, unless it exists (an empty file is an
/// empty SQLite database). SQLite gives its `-wal` and `-shm` files the
/// main file's permissions, so those are private too.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

/// Now, in milliseconds since the Unix epoch (0 for a clock set before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
