//! isopod's persistent state, in one SQLite file (`DIR/registry.sqlite3`).
//!
//! Today that state is the registry of deployed apps: for each app, the
//! versions it has had (bundle, opaque JSON manifest, who deployed it and
//! how) and which one is active, so a restart serves exactly what was
//! serving before. A [`Store`] is the one handle on the file; each concern
//! it keeps lives in a module of its own (the registry in `registry`, the
//! cache of version snapshots in `snapshots`).
//!
//! Invariants:
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

mod digest;
mod error;
mod registry;
mod schema;
mod snapshots;
mod store;

#[cfg(test)]
mod tests;

pub use digest::sha256_hex;
pub use error::StoreError;
pub use registry::{NewVersion, Origin, StoredVersion, VersionRecord};
pub use store::{Store, StoreOptions, DB_FILE_NAME};
