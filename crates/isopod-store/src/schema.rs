//! The database schema and its migrations.
//!
//! The schema's version is `PRAGMA user_version`: 0 for an empty file, N
//! once the first N migrations have run. Migrations only ever append to
//! [`MIGRATIONS`]; a released one is never edited, since files written by
//! it exist. All pending migrations and the version bump run in one
//! transaction, so a file is always at exactly one schema version.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{SqliteContext, StoreError};

/// Migration N+1 takes the schema from version N to N+1.
const MIGRATIONS: &[&str] = &[
    // 1: the app registry.
    //
    // `version_counters` outlives its app (remove does not delete it) so
    // numbers are never reused. `versions` does not reference `apps`: a first
    // deploy writes the version before the app row that points at it. The
    // `apps` foreign key makes "active version exists" SQLite's to keep.
    // `origin` has no CHECK so a later origin needs no table rebuild; readers
    // reject unknown ones.
    "
    CREATE TABLE bundles (
        sha256 TEXT PRIMARY KEY NOT NULL,
        source BLOB NOT NULL,
        size INTEGER NOT NULL
    );
    CREATE TABLE version_counters (
        app TEXT PRIMARY KEY NOT NULL,
        last_number INTEGER NOT NULL
    );
    CREATE TABLE versions (
        app TEXT NOT NULL,
        number INTEGER NOT NULL,
        bundle_sha256 TEXT NOT NULL REFERENCES bundles(sha256),
        manifest TEXT NOT NULL,
        deployed_at_ms INTEGER NOT NULL,
        deployed_by TEXT NOT NULL,
        origin TEXT NOT NULL,
        rolled_back_from INTEGER,
        PRIMARY KEY (app, number)
    );
    CREATE INDEX versions_by_bundle ON versions(bundle_sha256);
    CREATE TABLE apps (
        name TEXT PRIMARY KEY NOT NULL,
        active_version INTEGER NOT NULL,
        declared_digest TEXT,
        FOREIGN KEY (name, active_version) REFERENCES versions(app, number)
    );
    ",
    // 2: version snapshots, a cache beside the bundles: keyed by what a
    // snapshot depends on (the bundle, what else its top-level code saw, the
    // build that made it), swept with the bundle it was made from.
    "
    CREATE TABLE snapshots (
        key TEXT PRIMARY KEY NOT NULL,
        bundle_sha256 TEXT NOT NULL,
        bytes BLOB NOT NULL,
        made_at_ms INTEGER NOT NULL
    );
    CREATE INDEX snapshots_by_bundle ON snapshots(bundle_sha256);
    ",
];

/// The schema version this build writes.
pub(crate) const LATEST: usize = MIGRATIONS.len();

/// Brings the database at `db_path` (open as `conn`) to [`LATEST`].
///
/// Refuses a file from a newer build rather than guess at its meaning.
pub(crate) fn migrate(conn: &mut Connection, db_path: &Path) -> Result<(), StoreError> {
    const CONTEXT: &str = "migrating the registry schema";
    // IMMEDIATE: a second process opening the same file waits here rather
    // than running the same migrations concurrently.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .context(CONTEXT)?;
    let current: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .context(CONTEXT)?;
    let current = match usize::try_from(current) {
        Ok(v) if v <= LATEST => v,
        Ok(_) => {
            return Err(StoreError::Corrupt {
                what: format!(
                    "the registry at {} was written by a newer isopod (schema {current})",
                    db_path.display()
                ),
            })
        }
        Err(_) => {
            return Err(StoreError::Corrupt {
                what: format!(
                    "the registry at {} has an unknown schema version ({current})",
                    db_path.display()
                ),
            })
        }
    };
    if current == LATEST {
        return Ok(());
    }
    for migration in &MIGRATIONS[current..] {
        tx.execute_batch(migration).context(CONTEXT)?;
    }
    // LATEST is a small count of migrations; it always fits.
    let latest = i64::try_from(LATEST).unwrap_or(i64::MAX);
    tx.pragma_update(None, "user_version", latest)
        .context(CONTEXT)?;
    tx.commit().context(CONTEXT)
}
