//! What can go wrong opening, naming and administering KV namespaces and D1
//! databases (as opposed to running an app's calls on them: those fail with
//! [`crate::KvError`] and [`crate::D1Error`]).

use std::path::PathBuf;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A namespace or database name that could escape its directory or its
    /// Redis prefix.
    #[error("invalid {kind} name '{name}': {reason}")]
    InvalidName {
        /// "KV namespace" or "D1 database".
        kind: &'static str,
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A file or directory could not be created, read or written.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "creating".
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("storage database error while {context}: {source}")]
    Sqlite {
        /// What was being done.
        context: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// Redis is not configured, unreachable or failed.
    #[error("Redis: {0}")]
    Redis(String),
    /// A KV backend failed an administrative call (a purge, a namespace
    /// deletion).
    #[error("KV storage: {0}")]
    Backend(String),
    /// No such namespace or database.
    #[error("no {kind} '{name}'")]
    NotFound {
        /// "KV namespace" or "D1 database".
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The operating system gave no randomness for a secret.
    #[error("no randomness for {what}: {detail}")]
    NoRandomness {
        /// The secret being drawn.
        what: &'static str,
        /// What the operating system said.
        detail: String,
    },
    /// The namespace or database is held by an app, so it is not deleted.
    #[error("{kind} '{name}' is in use")]
    InUse {
        /// "KV namespace" or "D1 database".
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The operation cannot be done on this namespace or database.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A file holds what this build cannot read (a newer schema).
    #[error("{0}")]
    Corrupt(String),
    /// A background thread of the storage layer is gone (it panicked or the
    /// store is shutting down).
    #[error("the storage {0} thread is gone")]
    ThreadGone(&'static str),
}

/// Attaches what was being done to a SQLite error.
pub(crate) trait StorageContext<T> {
    /// Maps the error to [`StorageError::Sqlite`] with `context`.
    fn storage_context(self, context: &'static str) -> Result<T, StorageError>;
}

impl<T> StorageContext<T> for Result<T, rusqlite::Error> {
    fn storage_context(self, context: &'static str) -> Result<T, StorageError> {
        self.map_err(|source| StorageError::Sqlite { context, source })
    }
}
