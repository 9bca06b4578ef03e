//! Online copies of storage files (a D1 database, the KV file) through
//! SQLite's backup API: consistent, taken while the file stays in use.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

use crate::storage_error::{StorageContext as _, StorageError};

/// Pages copied per step: small steps let the file's writer in between.
const PAGES_PER_STEP: i32 = 256;
/// The pause between steps.
const PAUSE: Duration = Duration::from_millis(1);

/// Copies the SQLite database at `source` to `dest` (replacing it),
/// created owner-only. Blocks until done: call it off async threads.
///
/// A write to the source by another connection during the copy restarts
/// it, so under unceasing writes it takes longer; it never copies a torn
/// state.
pub(crate) fn copy(source: &Path, dest: &Path) -> Result<(), StorageError> {
    const CONTEXT: &str = "backing up a storage file";
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StorageError::Io {
            context: "creating",
            path: parent.to_path_buf(),
            source: e,
        })?;
    }
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .storage_context(CONTEXT)?;
    crate::sqlite_file::create_private(dest)?;
    let mut to = Connection::open(dest).storage_context(CONTEXT)?;
    let backup = Backup::new(&from, &mut to).storage_context(CONTEXT)?;
    backup
        .run_to_completion(PAGES_PER_STEP, PAUSE, None)
        .storage_context(CONTEXT)
}
