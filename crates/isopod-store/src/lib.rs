//! isopod's persistent state: the registry of deployed apps, and the
//! storage behind apps' KV bindings.
//!
//! The registry lives in one SQLite file (`DIR/registry.sqlite3`): for each
//! app, the versions it has had (bundle, opaque JSON manifest, who deployed
//! it and how) and which one is active, so a restart serves exactly what was
//! serving before. A [`Store`] is the one handle on the file; each concern
//! it keeps lives in a module of its own (the registry in `registry`, the
//! cache of version snapshots in `snapshots`).
//!
//! Apps' data lives apart from the registry, so an app's writes never
//! contend with deploys: Workers KV namespaces ([`kv`]) in `DIR/kv.sqlite3`
//! or in Redis, and D1 databases ([`d1`]), one SQLite file each under
//! `DIR/d1/`. A [`Storage`] opens them by name and shares the handles
//! between apps; it also lists and deletes them for the admin API, exports
//! a D1 database as SQL and takes online backups. Its API is async and shaped call for call like the Workers
//! binding, with Workers' limits and error messages, so the JS binding is a
//! thin mapping; no JavaScript or V8 here.
//!
//! Invariants of the registry:
//! - Every write is one `BEGIN IMMEDIATE` transaction with
//!   `synchronous=FULL`: a crash at any moment leaves either the old or the
//!   new state, never a half-written version or an app without an active
//!   version.
//! - Version numbers of an app start at 1 and only grow. They are never
//!   reused, not after pruning and not after the app is removed and
//!   deployed again.
//! - History only grows: a rollback records a new version copying an old
//!   one, so it can itself be rolled back.
//! - Bundles are content-addressed (SHA-256): identical sources are stored
//!   once, and a bundle no version refers to is deleted in the transaction
//!   that dropped its last version.
//! - The active version of an app is never pruned; apart from it, only the
//!   newest [`StoreOptions::keep_versions`] versions are kept.
//! - Manifests hold secrets, so the database file is created readable by
//!   its owner only (where the platform allows).
//!
//! Invariants of apps' storage:
//! - A binding reaches only its own namespace or database: no key, prefix
//!   or cursor an app passes can read or write another namespace's (see
//!   [`kv`]), and no SQL can open another file (see [`d1`]).
//! - Storage files are owner-only, like the registry.
//! - A namespace or database outlives the apps that use it: only an
//!   explicit delete removes it.
//! - Blocking work (SQLite) runs off the async threads: KV reads on tokio's
//!   blocking pool, KV writes on a writer thread that commits queued writes
//!   in batches, each D1 database's calls on a thread of its own; a write's
//!   future resolves once it is durable.

mod backup;
mod clock;
pub mod d1;
mod digest;
mod error;
pub mod kv;
mod names;
mod registry;
mod schema;
mod snapshots;
mod sqlite_file;
mod storage;
mod storage_error;
mod store;

#[cfg(test)]
mod tests;

pub use clock::Clock;
pub use digest::sha256_hex;
pub use error::StoreError;
pub use names::MAX_NAME_LEN;
pub use registry::{NewVersion, Origin, StoredVersion, VersionRecord};
pub use storage::{Storage, StorageOptions, CURSOR_KEY_FILE_NAME, D1_DIR_NAME};
pub use storage_error::StorageError;
pub use store::{Store, StoreOptions, DB_FILE_NAME};
