//! Opening the storage layer's SQLite files (the KV file, each D1
//! database) the same way every time: private, WAL, durable, migrated.

use std::fs;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::storage_error::{StorageContext as _, StorageError};

/// How long a connection waits for another's write lock before "database
/// is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates `path` empty and owner-only unless it exists (an empty file is
/// an empty SQLite database). SQLite gives its `-wal` and `-shm` files the
/// main file's permissions, so those are private too: tenants' data is no
/// other local user's to read.
pub(crate) fn create_private(path: &Path) -> Result<(), StorageError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(drop)
        .map_err(|source| StorageError::Io {
            context: "creating",
            path: path.to_path_buf(),
            source,
        })
}

/// Opens `path` for writing: WAL (readers never block the writer),
/// `synchronous=FULL` (a committed write survives power loss), foreign
/// keys enforced.
pub(crate) fn open_durable(path: &Path, context: &'static str) -> Result<Connection, StorageError> {
    let conn = Connection::open(path).storage_context(context)?;
    conn.busy_timeout(BUSY_TIMEOUT).storage_context(context)?;
    // A request, not a guarantee (some file systems cannot do WAL);
    // durability does not depend on it.
    let _mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .storage_context(context)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .storage_context(context)?;
    conn.pragma_update(None, "foreign_keys", true)
        .storage_context(context)?;
    Ok(conn)
}

/// Brings `conn`'s schema to `migrations.len()`, as the registry's schema
/// module does: `user_version` counts the migrations run, all pending ones
/// run in one transaction, a file from a newer build is refused.
pub(crate) fn migrate(
    conn: &mut Connection,
    migrations: &[&str],
    context: &'static str,
) -> Result<(), StorageError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .storage_context(context)?;
    let current: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .storage_context(context)?;
    let current = usize::try_from(current)
        .ok()
        .filter(|&v| v <= migrations.len())
        .ok_or_else(|| {
            StorageError::Corrupt(format!(
                "while {context}: schema version {current} is not one this build knows \
                 (a newer isopod wrote it?)"
            ))
        })?;
    for migration in &migrations[current..] {
        tx.execute_batch(migration).storage_context(context)?;
    }
    let latest = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    tx.pragma_update(None, "user_version", latest)
        .storage_context(context)?;
    tx.commit().storage_context(context)
}
