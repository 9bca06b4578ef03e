//! The registry of deployed apps: their versions, which one is active,
//! deploys, config declarations, rollbacks, pruning and removal.
//!
//! Every write runs in one `BEGIN IMMEDIATE` transaction that records the
//! version, points the app at it, prunes and sweeps bundles, so a crash or
//! an error at any step keeps the previous state whole. Every write makes
//! its new version active, so the active version is always the app's
//! newest; pruning still excludes it explicitly, not by that coincidence.

use std::fmt;

use rusqlite::{Connection, OptionalExtension as _, Row, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::digest::sha256_hex;
use crate::error::{SqliteContext, StoreError};
use crate::store::{now_ms, Store};

/// The query for version records, columns in [`RawVersion::from_row`]'s
/// order, then `$extra` (`", b.source"` for [`RawStored`]). `active` is
/// NULL-safe: a version of an app without a row is not active.
macro_rules! select_versions {
    ($extra:literal) => {
        concat!(
            "SELECT v.app, v.number, v.bundle_sha256, b.size, v.manifest, v.deployed_at_ms,
                    v.deployed_by, v.origin, v.rolled_back_from,
                    a.active_version IS v.number",
            $extra,
            " FROM versions v
              JOIN bundles b ON b.sha256 = v.bundle_sha256
              LEFT JOIN apps a ON a.name = v.app"
        )
    };
}

/// How a version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Deployed through the admin API.
    Api,
    /// Declared in a config file.
    Config,
    /// A copy of an earlier version, made active again.
    Rollback,
    /// The previous version with changed vars or secrets.
    Vars,
}

impl Origin {
    /// The name stored in the database and shown by the API: `api`,
    /// `config`, `rollback` or `vars`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Config => "config",
            Origin::Rollback => "rollback",
            Origin::Vars => "vars",
        }
    }

    fn parse(name: &str) -> Option<Origin> {
        [Origin::Api, Origin::Config, Origin::Rollback, Origin::Vars]
            .into_iter()
            .find(|origin| origin.as_str() == name)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version to record.
#[derive(Debug, Clone, Copy)]
pub struct NewVersion<'a> {
    /// The bundle's source.
    pub source: &'a [u8],
    /// The app's manifest (routes, vars, secrets, mode, limits…), opaque to
    /// the store and returned as given.
    pub manifest: &'a serde_json::Value,
    /// Who deployed it: the admin token's name, or "config".
    pub deployed_by: &'a str,
    /// How it came to be.
    pub origin: Origin,
}

/// One recorded version of an app, without its source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionRecord {
    /// The app's name.
    pub app: String,
    /// The version's number: from 1, growing, never reused within the app.
    pub number: u64,
    /// The SHA-256 of the bundle, as lowercase hex.
    pub bundle_sha256: String,
    /// The bundle's size in bytes.
    pub bundle_size: u64,
    /// The manifest, as deployed.
    pub manifest: serde_json::Value,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub deployed_at_ms: u64,
    /// Who recorded it.
    pub deployed_by: String,
    /// How it came to be.
    pub origin: Origin,
    /// For a rollback, the number of the version it copies.
    pub rolled_back_from: Option<u64>,
    /// Whether it is the app's active version.
    pub active: bool,
}

/// A version with its bundle's source: what an instance is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVersion {
    /// The version.
    pub record: VersionRecord,
    /// The bundle's source.
    pub source: Vec<u8>,
}

impl Store {
    /// Records a new version of `app` and makes it active, in one
    /// transaction; prunes versions beyond
    /// [`keep_versions`](crate::StoreOptions::keep_versions). Deploying a new
    /// app creates it.
    pub fn deploy(&self, app: &str, new: NewVersion<'_>) -> Result<VersionRecord, StoreError> {
        const CONTEXT: &str = "recording a version";
        let mut conn = self.conn();
        let tx = begin(&mut conn, CONTEXT)?;
        let record = self.record(&tx, app, Insert::new(&tx, &new, CONTEXT)?, None, CONTEXT)?;
        tx.commit().context(CONTEXT)?;
        Ok(record)
    }

    /// Applies a version declared in a config file.
    ///
    /// If `declaration_digest` equals the digest recorded at the app's last
    /// config apply and the app exists, does nothing and returns `None`:
    /// the registry's state stands, including a later API deploy or
    /// rollback, so a restart does not undo them. Otherwise records a new
    /// version with origin [`Origin::Config`] and deployed by "config"
    /// (whatever `new` says for those), makes it active, remembers the
    /// digest, and returns it.
    pub fn apply_declared(
        &self,
        app: &str,
        declaration_digest: &str,
        new: NewVersion<'_>,
    ) -> Result<Option<VersionRecord>, StoreError> {
        const CONTEXT: &str = "applying a declared version";
        let mut conn = self.conn();
        let tx = begin(&mut conn, CONTEXT)?;
        let recorded: Option<Option<String>> = tx
            .query_row(
                "SELECT declared_digest FROM apps WHERE name = ?1",
                [app],
                |row| row.get(0),
            )
            .optional()
            .context(CONTEXT)?;
        if recorded.flatten().as_deref() == Some(declaration_digest) {
            return Ok(None);
        }
        let new = NewVersion {
            deployed_by: "config",
            origin: Origin::Config,
            ..new
        };
        let insert = Insert::new(&tx, &new, CONTEXT)?;
        let record = self.record(&tx, app, insert, Some(declaration_digest), CONTEXT)?;
        tx.commit().context(CONTEXT)?;
        Ok(Some(record))
    }

    /// Makes version `to` of `app` active again — or, if `to` is `None`,
    /// the kept version numbered just below the active one — by recording
    /// a new version that copies its bundle and manifest (origin
    /// [`Origin::Rollback`], `rolled_back_from` set). History only grows, so
    /// a rollback can itself be rolled back. Naming the active version is
    /// allowed and records a copy of it.
    pub fn rollback(
        &self,
        app: &str,
        to: Option<u64>,
        deployed_by: &str,
    ) -> Result<VersionRecord, StoreError> {
        const CONTEXT: &str = "rolling back";
        let mut conn = self.conn();
        let tx = begin(&mut conn, CONTEXT)?;
        let no_such_version = |number| StoreError::NoSuchVersion {
            app: app.into(),
            number,
        };
        let target = rollback_number(&tx, app, to, CONTEXT)?;
        let (bundle_sha256, manifest): (String, String) = tx
            .query_row(
                "SELECT bundle_sha256, manifest FROM versions WHERE app = ?1 AND number = ?2",
                (app, target),
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .context(CONTEXT)?
            .ok_or_else(|| no_such_version(to.unwrap_or(target.unsigned_abs())))?;
        let insert = Insert {
            bundle_sha256,
            manifest,
            deployed_by,
            origin: Origin::Rollback,
            rolled_back_from: Some(target),
        };
        let record = self.record(&tx, app, insert, None, CONTEXT)?;
        tx.commit().context(CONTEXT)?;
        Ok(record)
    }

    /// The version [`Store::rollback`] with the same `app` and `to` would
    /// copy, with its source, without recording anything: for a caller that
    /// checks a version can be served before it rolls back to it.
    pub fn rollback_target(&self, app: &str, to: Option<u64>) -> Result<StoredVersion, StoreError> {
        const CONTEXT: &str = "reading a version";
        let mut conn = self.conn();
        let tx = conn.transaction().context(CONTEXT)?;
        let target = rollback_number(&tx, app, to, CONTEXT)?;
        let raw = tx
            .query_row(
                concat!(
                    select_versions!(", b.source"),
                    " WHERE v.app = ?1 AND v.number = ?2"
                ),
                (app, target),
                RawStored::from_row,
            )
            .optional()
            .context(CONTEXT)?
            .ok_or_else(|| StoreError::NoSuchVersion {
                app: app.into(),
                number: target.unsigned_abs(),
            })?;
        raw.into_stored()
    }

    /// Every kept version of `app`, newest first, `active` set on the
    /// active one. [`StoreError::NoSuchApp`] if the app is not deployed.
    pub fn versions(&self, app: &str) -> Result<Vec<VersionRecord>, StoreError> {
        const CONTEXT: &str = "listing versions";
        let mut conn = self.conn();
        // A read transaction: the existence check and the list see one
        // snapshot even if another process writes in between.
        let tx = conn.transaction().context(CONTEXT)?;
        if active_number(&tx, app, CONTEXT)?.is_none() {
            return Err(StoreError::NoSuchApp(app.into()));
        }
        let mut statement = tx
            .prepare(concat!(
                select_versions!(""),
                " WHERE v.app = ?1 ORDER BY v.number DESC"
            ))
            .context(CONTEXT)?;
        let raws = statement
            .query_map([app], RawVersion::from_row)
            .context(CONTEXT)?
            .collect::<Result<Vec<_>, _>>()
            .context(CONTEXT)?;
        raws.into_iter().map(RawVersion::into_record).collect()
    }

    /// The active version of `app` with its source, or `None` if the app is
    /// not deployed.
    pub fn active(&self, app: &str) -> Result<Option<StoredVersion>, StoreError> {
        const CONTEXT: &str = "reading the active version";
        let conn = self.conn();
        let raw = conn
            .query_row(
                concat!(
                    select_versions!(", b.source"),
                    " WHERE a.active_version = v.number AND v.app = ?1"
                ),
                [app],
                RawStored::from_row,
            )
            .optional()
            .context(CONTEXT)?;
        raw.map(RawStored::into_stored).transpose()
    }

    /// Every app's active version with its source, ordered by app name:
    /// what a restart serves.
    pub fn active_versions(&self) -> Result<Vec<StoredVersion>, StoreError> {
        const CONTEXT: &str = "reading the active versions";
        let conn = self.conn();
        let mut statement = conn
            .prepare(concat!(
                select_versions!(", b.source"),
                " WHERE a.active_version = v.number ORDER BY v.app"
            ))
            .context(CONTEXT)?;
        let raws = statement
            .query_map([], RawStored::from_row)
            .context(CONTEXT)?
            .collect::<Result<Vec<_>, _>>()
            .context(CONTEXT)?;
        raws.into_iter().map(RawStored::into_stored).collect()
    }

    /// Removes `app`, all its versions and the bundles no other version
    /// uses; returns whether it existed. Its version numbers stay spent: a
    /// later deploy of the same name continues after the last one.
    pub fn remove_app(&self, app: &str) -> Result<bool, StoreError> {
        const CONTEXT: &str = "removing an app";
        let mut conn = self.conn();
        let tx = begin(&mut conn, CONTEXT)?;
        // The app row goes first: it references the versions.
        let existed = tx
            .execute("DELETE FROM apps WHERE name = ?1", [app])
            .context(CONTEXT)?
            > 0;
        tx.execute("DELETE FROM versions WHERE app = ?1", [app])
            .context(CONTEXT)?;
        sweep_bundles(&tx, CONTEXT)?;
        tx.commit().context(CONTEXT)?;
        Ok(existed)
    }

    /// Records `insert` as `app`'s next version, makes it active (setting
    /// the declared digest if given, keeping the recorded one otherwise),
    /// prunes, and reads the version back. The caller commits.
    fn record(
        &self,
        tx: &Transaction<'_>,
        app: &str,
        insert: Insert<'_>,
        declared_digest: Option<&str>,
        context: &'static str,
    ) -> Result<VersionRecord, StoreError> {
        // Counters outlive their app and only grow, so a number is never
        // handed out twice, even across removal.
        let number: i64 = tx
            .query_row(
                "INSERT INTO version_counters (app, last_number) VALUES (?1, 1)
                 ON CONFLICT (app) DO UPDATE SET last_number = last_number + 1
                 RETURNING last_number",
                [app],
                |row| row.get(0),
            )
            .context(context)?;
        tx.execute(
            "INSERT INTO versions (app, number, bundle_sha256, manifest, deployed_at_ms,
                                   deployed_by, origin, rolled_back_from)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            (
                app,
                number,
                &insert.bundle_sha256,
                &insert.manifest,
                i64::try_from(now_ms()).unwrap_or(i64::MAX),
                insert.deployed_by,
                insert.origin.as_str(),
                insert.rolled_back_from,
            ),
        )
        .context(context)?;
        match declared_digest {
            None => tx.execute(
                "INSERT INTO apps (name, active_version) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version",
                (app, number),
            ),
            Some(digest) => tx.execute(
                "INSERT INTO apps (name, active_version, declared_digest) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version,
                                                  declared_digest = excluded.declared_digest",
                (app, number, digest),
            ),
        }
        .context(context)?;

        // Keep the newest `keep` and, whatever its number, the active one.
        // With no app row the subquery is NULL and nothing is deleted.
        let keep = i64::try_from(self.options.keep_versions.max(1)).unwrap_or(i64::MAX);
        tx.execute(
            "DELETE FROM versions
             WHERE app = ?1
               AND number <> (SELECT active_version FROM apps WHERE name = ?1)
               AND number NOT IN (SELECT number FROM versions WHERE app = ?1
                                  ORDER BY number DESC LIMIT ?2)",
            (app, keep),
        )
        .context(context)?;
        sweep_bundles(tx, context)?;

        let raw = tx
            .query_row(
                concat!(select_versions!(""), " WHERE v.app = ?1 AND v.number = ?2"),
                (app, number),
                RawVersion::from_row,
            )
            .context(context)?;
        raw.into_record()
    }
}

/// A version row about to be inserted, its bundle already stored.
struct Insert<'a> {
    bundle_sha256: String,
    manifest: String,
    deployed_by: &'a str,
    origin: Origin,
    rolled_back_from: Option<i64>,
}

impl<'a> Insert<'a> {
    /// Stores `new`'s bundle (once per content) and serialises its manifest.
    fn new(
        tx: &Transaction<'_>,
        new: &NewVersion<'a>,
        context: &'static str,
    ) -> Result<Insert<'a>, StoreError> {
        let bundle_sha256 = sha256_hex(new.source);
        tx.execute(
            "INSERT INTO bundles (sha256, source, size) VALUES (?1, ?2, ?3)
             ON CONFLICT (sha256) DO NOTHING",
            (
                &bundle_sha256,
                new.source,
                i64::try_from(new.source.len()).unwrap_or(i64::MAX),
            ),
        )
        .context(context)?;
        let manifest = serde_json::to_string(new.manifest).map_err(|e| StoreError::Corrupt {
            what: format!("a manifest could not be serialised: {e}"),
        })?;
        Ok(Insert {
            bundle_sha256,
            manifest,
            deployed_by: new.deployed_by,
            origin: new.origin,
            rolled_back_from: None,
        })
    }
}

/// Starts a write. IMMEDIATE takes the write lock now, so a write never
/// fails halfway for want of it (and waits out the busy timeout instead).
fn begin<'c>(
    conn: &'c mut Connection,
    context: &'static str,
) -> Result<Transaction<'c>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .context(context)
}

/// The number of `app`'s active version, or `None` if it is not deployed.
fn active_number(
    conn: &Connection,
    app: &str,
    context: &'static str,
) -> Result<Option<i64>, StoreError> {
    conn.query_row(
        "SELECT active_version FROM apps WHERE name = ?1",
        [app],
        |row| row.get(0),
    )
    .optional()
    .context(context)
}

/// Deletes every bundle no version refers to.
fn sweep_bundles(conn: &Connection, context: &'static str) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM bundles
         WHERE NOT EXISTS (SELECT 1 FROM versions WHERE versions.bundle_sha256 = bundles.sha256)",
        [],
    )
    .context(context)?;
    conn.execute(
        "DELETE FROM snapshots
         WHERE NOT EXISTS (SELECT 1 FROM bundles WHERE bundles.sha256 = snapshots.bundle_sha256)",
        [],
    )
    .map(drop)
    .context(context)
}

/// A version row as SQLite holds it, before the checks that turn it into a
/// [`VersionRecord`].
struct RawVersion {
    app: String,
    number: i64,
    bundle_sha256: String,
    bundle_size: i64,
    manifest: String,
    deployed_at_ms: i64,
    deployed_by: String,
    origin: String,
    rolled_back_from: Option<i64>,
    active: bool,
}

impl RawVersion {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawVersion> {
        Ok(RawVersion {
            app: row.get(0)?,
            number: row.get(1)?,
            bundle_sha256: row.get(2)?,
            bundle_size: row.get(3)?,
            manifest: row.get(4)?,
            deployed_at_ms: row.get(5)?,
            deployed_by: row.get(6)?,
            origin: row.get(7)?,
            rolled_back_from: row.get(8)?,
            active: row.get(9)?,
        })
    }

    fn into_record(self) -> Result<VersionRecord, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt {
            what: format!(
                "version {} of app '{}' in the registry {what}",
                self.number, self.app
            ),
        };
        let unsigned = |value: i64, field: &str| {
            u64::try_from(value).map_err(|_| corrupt(format!("has a negative {field} ({value})")))
        };
        let record = VersionRecord {
            number: unsigned(self.number, "number")?,
            bundle_size: unsigned(self.bundle_size, "bundle size")?,
            manifest: serde_json::from_str(&self.manifest)
                .map_err(|e| corrupt(format!("has a manifest that is not JSON: {e}")))?,
            deployed_at_ms: unsigned(self.deployed_at_ms, "deploy time")?,
            origin: Origin::parse(&self.origin)
                .ok_or_else(|| corrupt(format!("has an unknown origin '{}'", self.origin)))?,
            rolled_back_from: self
                .rolled_back_from
                .map(|n| unsigned(n, "rolled-back-from number"))
                .transpose()?,
            active: self.active,
            bundle_sha256: self.bundle_sha256,
            deployed_by: self.deployed_by,
            app: self.app,
        };
        Ok(record)
    }
}

/// A [`RawVersion`] with its bundle's source (column 10).
struct RawStored {
    version: RawVersion,
    source: Vec<u8>,
}

impl RawStored {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawStored> {
        Ok(RawStored {
            version: RawVersion::from_row(row)?,
            source: row.get(10)?,
        })
    }

    fn into_stored(self) -> Result<StoredVersion, StoreError> {
        Ok(StoredVersion {
            record: self.version.into_record()?,
            source: self.source,
        })
    }
}

/// The number of the version a rollback of `app` to `to` copies: `to`
/// itself, or the kept version just below the active one.
fn rollback_number(
    tx: &Transaction<'_>,
    app: &str,
    to: Option<u64>,
    context: &'static str,
) -> Result<i64, StoreError> {
    let active =
        active_number(tx, app, context)?.ok_or_else(|| StoreError::NoSuchApp(app.into()))?;
    match to {
        Some(number) => i64::try_from(number).map_err(|_| StoreError::NoSuchVersion {
            app: app.into(),
            number,
        }),
        None => tx
            .query_row(
                "SELECT MAX(number) FROM versions WHERE app = ?1 AND number < ?2",
                (app, active),
                |row| row.get::<_, Option<i64>>(0),
            )
            .context(context)?
            .ok_or_else(|| StoreError::NothingToRollBackTo(app.into())),
    }
}
