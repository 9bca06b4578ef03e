//! What can go wrong with the store, each a one-line message.

use std::path::PathBuf;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store's directory could not be created or written to.
    #[error("the store directory {} is not writable: {reason}", dir.display())]
    NotWritable {
        /// The directory the store was opened on.
        dir: PathBuf,
        /// What the operating system said.
        reason: String,
    },
    /// SQLite failed; nothing the failed operation wrote was kept.
    #[error("registry database error while {context}: {source}")]
    Sqlite {
        /// What was being done, e.g. "recording a version".
        context: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The app is not deployed.
    #[error("no app '{0}' is deployed")]
    NoSuchApp(String),
    /// The app has no (kept) version with this number.
    #[error("no version {number} of app '{app}'")]
    NoSuchVersion {
        /// The app.
        app: String,
        /// The version asked for.
        number: u64,
    },
    /// A rollback without a target on an app whose active version is its
    /// oldest kept one.
    #[error("app '{0}' has no earlier version to roll back to")]
    NothingToRollBackTo(String),
    /// The database holds something this build cannot read: a manifest that
    /// is not JSON, an unknown origin, or a schema newer than this build.
    #[error("{what}")]
    Corrupt {
        /// The whole sentence: what is wrong, and where.
        what: String,
    },
}

/// Attaches what was being done to a SQLite error.
pub(crate) trait SqliteContext<T> {
    /// Maps the error to [`StoreError::Sqlite`] with `context`.
    fn context(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> SqliteContext<T> for Result<T, rusqlite::Error> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { context, source })
    }
}
