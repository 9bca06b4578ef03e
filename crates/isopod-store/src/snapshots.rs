//! Version snapshots kept beside their bundles, so a restart does not make
//! them again.
//!
//! A cache, not history: a row is keyed by everything its snapshot depends
//! on (the caller builds the key: bundle digest, what else top-level code
//! saw, the build that made it), so a key that matches is a snapshot that
//! fits; it goes when its bundle goes. Losing a row only costs a remake.

use rusqlite::OptionalExtension;

use crate::error::{SqliteContext, StoreError};
use crate::store::{now_ms, Store};

impl Store {
    /// The snapshot stored under `key`, if any.
    pub fn snapshot(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        const CONTEXT: &str = "reading a version snapshot";
        self.conn()
            .query_row("SELECT bytes FROM snapshots WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .context(CONTEXT)
    }

    /// Keeps `bytes` under `key`, for as long as the bundle `bundle_sha256`
    /// is stored. Ignored (`Ok(false)`) when no version refers to that
    /// bundle any more: the snapshot would outlive it.
    pub fn put_snapshot(
        &self,
        key: &str,
        bundle_sha256: &str,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        const CONTEXT: &str = "writing a version snapshot";
        let now_ms = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        let written = self
            .conn()
            .execute(
                "INSERT OR REPLACE INTO snapshots (key, bundle_sha256, bytes, made_at_ms)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM bundles WHERE sha256 = ?2)",
                rusqlite::params![key, bundle_sha256, bytes, now_ms],
            )
            .context(CONTEXT)?;
        Ok(written > 0)
    }
}
