//! The store's behaviour, each test on a fresh directory of its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use crate::{
    sha256_hex, NewVersion, Origin, Store, StoreError, StoreOptions, VersionRecord, DB_FILE_NAME,
};

/// A directory under the system temp dir, removed (made writable first)
/// when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "isopod-store-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &TempDir) -> Store {
    Store::open(dir.path(), StoreOptions::default()).unwrap()
}

fn open_keeping(dir: &TempDir, keep_versions: usize) -> Store {
    Store::open(dir.path(), StoreOptions { keep_versions }).unwrap()
}

fn deploy(store: &Store, app: &str, source: &str) -> VersionRecord {
    store
        .deploy(
            app,
            NewVersion {
                source: source.as_bytes(),
                manifest: &json!({ "source": source }),
                deployed_by: "admin",
                origin: Origin::Api,
            },
        )
        .unwrap()
}

fn apply(store: &Store, app: &str, digest: &str, source: &str) -> Option<VersionRecord> {
    store
        .apply_declared(
            app,
            digest,
            NewVersion {
                source: source.as_bytes(),
                manifest: &json!({ "source": source }),
                deployed_by: "ignored",
                origin: Origin::Api,
            },
        )
        .unwrap()
}

/// A second connection, to look at what the store wrote.
fn peek(dir: &TempDir) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).unwrap()
}

fn count(dir: &TempDir, table: &str) -> i64 {
    peek(dir)
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .unwrap()
}

fn numbers(store: &Store, app: &str) -> Vec<u64> {
    store
        .versions(app)
        .unwrap()
        .iter()
        .map(|v| v.number)
        .collect()
}

fn active_number(store: &Store, app: &str) -> u64 {
    store.active(app).unwrap().unwrap().record.number
}

#[test]
fn deploys_number_from_one_newest_first_and_share_identical_bundles() {
    let dir = TempDir::new("deploy");
    let store = open(&dir);
    let one = deploy(&store, "shop", "v1");
    assert_eq!(one.number, 1);
    assert!(one.active);
    assert_eq!(one.origin, Origin::Api);
    assert_eq!(one.deployed_by, "admin");
    assert_eq!(one.bundle_sha256, sha256_hex(b"v1"));
    assert_eq!(one.bundle_size, 2);
    assert_eq!(one.manifest, json!({ "source": "v1" }));
    assert_eq!(one.rolled_back_from, None);
    deploy(&store, "shop", "v2");
    deploy(&store, "shop", "v1");

    let versions = store.versions("shop").unwrap();
    let summary: Vec<(u64, bool)> = versions.iter().map(|v| (v.number, v.active)).collect();
    assert_eq!(summary, [(3, true), (2, false), (1, false)]);
    assert_eq!(versions[0].bundle_sha256, versions[2].bundle_sha256);
    assert_eq!(count(&dir, "bundles"), 2);

    let active = store.active("shop").unwrap().unwrap();
    assert_eq!(active.record.number, 3);
    assert_eq!(active.source, b"v1");
    assert!(store.active("nobody").unwrap().is_none());
    assert!(matches!(
        store.versions("nobody"),
        Err(StoreError::NoSuchApp(app)) if app == "nobody"
    ));
}

#[test]
fn a_reopened_store_serves_what_was_active() {
    let dir = TempDir::new("reopen");
    {
        let store = open(&dir);
        deploy(&store, "shop", "shop v1");
        deploy(&store, "shop", "shop v2");
        deploy(&store, "blog", "blog v1");
        store.rollback("shop", None, "admin").unwrap();
        store.flush().unwrap();
    }
    let store = open(&dir);
    let active: Vec<(String, u64, Vec<u8>)> = store
        .active_versions()
        .unwrap()
        .into_iter()
        .map(|v| (v.record.app, v.record.number, v.source))
        .collect();
    assert_eq!(
        active,
        [
            ("blog".to_string(), 1, b"blog v1".to_vec()),
            ("shop".to_string(), 3, b"shop v1".to_vec()),
        ]
    );
    assert_eq!(store.dir(), dir.path());
}

#[test]
fn rollback_without_a_target_goes_to_the_previous_version() {
    let dir = TempDir::new("rollback-previous");
    let store = open(&dir);
    for source in ["v1", "v2", "v3"] {
        deploy(&store, "shop", source);
    }
    let back = store.rollback("shop", None, "ops").unwrap();
    assert_eq!(back.number, 4);
    assert_eq!(back.rolled_back_from, Some(2));
    assert_eq!(back.origin, Origin::Rollback);
    assert_eq!(back.deployed_by, "ops");
    assert_eq!(back.manifest, json!({ "source": "v2" }));
    assert!(back.active);
    assert_eq!(store.active("shop").unwrap().unwrap().source, b"v2");
    // Version 2 and its copy share a bundle.
    assert_eq!(count(&dir, "bundles"), 3);

    // The rollback can itself be rolled back: below 4 is 3.
    let again = store.rollback("shop", None, "ops").unwrap();
    assert_eq!((again.number, again.rolled_back_from), (5, Some(3)));
    assert_eq!(numbers(&store, "shop"), [5, 4, 3, 2, 1]);
}

#[test]
fn the_rollback_target_is_the_version_a_rollback_would_copy() {
    let dir = TempDir::new("target");
    let store = open(&dir);
    deploy(&store, "shop", "one");
    deploy(&store, "shop", "two");
    let target = store.rollback_target("shop", None).unwrap();
    assert_eq!(
        (target.record.number, target.source.as_slice()),
        (1, &b"one"[..])
    );
    assert_eq!(
        store.rollback_target("shop", Some(2)).unwrap().source,
        b"two"
    );
    assert!(matches!(
        store.rollback_target("shop", Some(9)),
        Err(StoreError::NoSuchVersion { number: 9, .. })
    ));
    assert_eq!(active_number(&store, "shop"), 2, "nothing was recorded");
    let rolled = store
        .rollback("shop", Some(target.record.number), "ops")
        .unwrap();
    assert_eq!(rolled.rolled_back_from, Some(1));
}

#[test]
fn rollback_to_a_named_version() {
    let dir = TempDir::new("rollback-named");
    let store = open(&dir);
    for source in ["v1", "v2", "v3"] {
        deploy(&store, "shop", source);
    }
    let back = store.rollback("shop", Some(1), "ops").unwrap();
    assert_eq!((back.number, back.rolled_back_from), (4, Some(1)));
    assert_eq!(store.active("shop").unwrap().unwrap().source, b"v1");
}

#[test]
fn failed_rollbacks_leave_the_active_version_alone() {
    let dir = TempDir::new("rollback-errors");
    let store = open_keeping(&dir, 2);
    deploy(&store, "solo", "only");
    assert!(matches!(
        store.rollback("solo", None, "ops"),
        Err(StoreError::NothingToRollBackTo(app)) if app == "solo"
    ));
    assert_eq!(numbers(&store, "solo"), [1]);

    for source in ["v1", "v2", "v3"] {
        deploy(&store, "shop", source);
    }
    // Version 1 was pruned (two are kept).
    let err = store.rollback("shop", Some(1), "ops").unwrap_err();
    assert!(matches!(
        &err,
        StoreError::NoSuchVersion { app, number: 1 } if app == "shop"
    ));
    assert_eq!(err.to_string(), "no version 1 of app 'shop'");
    assert!(matches!(
        store.rollback("shop", Some(u64::MAX), "ops"),
        Err(StoreError::NoSuchVersion { .. })
    ));
    assert!(matches!(
        store.rollback("nobody", None, "ops"),
        Err(StoreError::NoSuchApp(_))
    ));
    assert_eq!(active_number(&store, "shop"), 3);
    assert_eq!(numbers(&store, "shop"), [3, 2]);
    // The counter did not move either.
    assert_eq!(deploy(&store, "shop", "v4").number, 4);
}

#[test]
fn a_write_that_fails_midway_keeps_the_previous_state() {
    let dir = TempDir::new("midway");
    let store = open(&dir);
    deploy(&store, "shop", "v1");
    // Make the last step of a deploy (pointing the app at the new version)
    // fail, after the bundle, counter and version rows were written.
    peek(&dir)
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE UPDATE ON apps
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
    let failed = store.deploy(
        "shop",
        NewVersion {
            source: b"v2",
            manifest: &json!({}),
            deployed_by: "admin",
            origin: Origin::Api,
        },
    );
    assert!(matches!(
        failed,
        Err(StoreError::Sqlite {
            context: "recording a version",
            ..
        })
    ));
    assert_eq!(numbers(&store, "shop"), [1]);
    assert_eq!(store.active("shop").unwrap().unwrap().source, b"v1");
    assert_eq!(count(&dir, "bundles"), 1);

    peek(&dir).execute_batch("DROP TRIGGER refuse;").unwrap();
    assert_eq!(deploy(&store, "shop", "v2").number, 2);
}

#[test]
fn pruning_keeps_the_newest_and_drops_unused_bundles() {
    let dir = TempDir::new("prune");
    let store = open_keeping(&dir, 3);
    for n in 1..=6 {
        deploy(&store, "shop", &format!("v{n}"));
    }
    let versions = store.versions("shop").unwrap();
    assert_eq!(numbers(&store, "shop"), [6, 5, 4]);
    assert!(versions[0].active);
    assert_eq!(count(&dir, "bundles"), 3);
    assert_eq!(count(&dir, "versions"), 3);

    // Roll back to 4, the oldest kept: its copy (7) is active and kept;
    // 4 itself is pruned but its bundle stays, in use by 7.
    let back = store.rollback("shop", Some(4), "ops").unwrap();
    assert_eq!(back.number, 7);
    assert_eq!(numbers(&store, "shop"), [7, 6, 5]);
    assert_eq!(active_number(&store, "shop"), 7);
    assert_eq!(store.active("shop").unwrap().unwrap().source, b"v4");
    assert_eq!(count(&dir, "bundles"), 3);

    // Another app's bundles are not swept by this app's pruning.
    deploy(&store, "blog", "v1");
    deploy(&store, "shop", "v8");
    assert_eq!(store.active("blog").unwrap().unwrap().source, b"v1");
}

#[test]
fn keeping_zero_versions_still_keeps_the_active_one() {
    let dir = TempDir::new("prune-zero");
    let store = open_keeping(&dir, 0);
    for n in 1..=3 {
        deploy(&store, "shop", &format!("v{n}"));
    }
    let versions = store.versions("shop").unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!((versions[0].number, versions[0].active), (3, true));
    assert_eq!(count(&dir, "bundles"), 1);
    assert!(matches!(
        store.rollback("shop", None, "ops"),
        Err(StoreError::NothingToRollBackTo(_))
    ));
}

#[test]
fn declared_versions_apply_once_per_digest() {
    let dir = TempDir::new("declared");
    let store = open(&dir);
    let first = apply(&store, "shop", "d1", "v1").unwrap();
    assert_eq!(first.number, 1);
    assert_eq!(first.origin, Origin::Config);
    assert_eq!(first.deployed_by, "config");
    assert!(apply(&store, "shop", "d1", "v1").is_none());

    let changed = apply(&store, "shop", "d2", "v2").unwrap();
    assert_eq!(changed.number, 2);
    assert!(changed.active);

    // An API deploy (and a rollback) over the declared version stand when
    // the unchanged declaration is applied again, as at a restart.
    deploy(&store, "shop", "v3 by api");
    assert!(apply(&store, "shop", "d2", "v2").is_none());
    assert_eq!(store.active("shop").unwrap().unwrap().source, b"v3 by api");
    store.rollback("shop", Some(1), "ops").unwrap();
    assert!(apply(&store, "shop", "d2", "v2").is_none());
    assert_eq!(active_number(&store, "shop"), 4);

    // A changed declaration wins over them.
    assert_eq!(apply(&store, "shop", "d3", "v5").unwrap().number, 5);

    // Once removed, the same digest deploys again.
    assert!(store.remove_app("shop").unwrap());
    assert_eq!(apply(&store, "shop", "d3", "v5").unwrap().number, 6);
}

#[test]
fn numbering_continues_after_removal() {
    let dir = TempDir::new("remove");
    let store = open(&dir);
    deploy(&store, "shop", "v1");
    deploy(&store, "shop", "v2");
    deploy(&store, "blog", "v1");
    assert!(store.remove_app("shop").unwrap());
    assert!(!store.remove_app("shop").unwrap());
    assert!(store.active("shop").unwrap().is_none());
    assert!(matches!(
        store.versions("shop"),
        Err(StoreError::NoSuchApp(_))
    ));
    // "v2" was used only by shop; "v1" is still blog's.
    assert_eq!(count(&dir, "bundles"), 1);
    assert_eq!(store.active_versions().unwrap().len(), 1);

    let again = deploy(&store, "shop", "v1 again");
    assert_eq!(again.number, 3);
    assert_eq!(numbers(&store, "shop"), [3]);
}

#[test]
fn a_read_only_directory_is_reported_at_open() {
    let dir = TempDir::new("read-only");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
        // Root writes anyway; then there is nothing to check.
        if fs::write(dir.path().join("root?"), b"").is_ok() {
            return;
        }
        let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
        assert!(
            matches!(&err, StoreError::NotWritable { dir: d, .. } if d == dir.path()),
            "{err}"
        );
        assert!(err.to_string().contains(&dir.path().display().to_string()));
        // Nor can a directory be created inside it.
        let inner = dir.path().join("inner");
        assert!(matches!(
            Store::open(&inner, StoreOptions::default()),
            Err(StoreError::NotWritable { dir: d, .. }) if d == inner
        ));
    }
}

#[test]
fn a_file_where_the_directory_should_be_is_reported_at_open() {
    let dir = TempDir::new("file");
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    for path in [file.clone(), file.join("below")] {
        let err = Store::open(&path, StoreOptions::default()).unwrap_err();
        assert!(
            matches!(&err, StoreError::NotWritable { dir: d, .. } if *d == path),
            "{err}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
    }
}

#[test]
fn a_missing_directory_is_created_and_the_database_is_private() {
    let dir = TempDir::new("create");
    let nested = dir.path().join("a").join("b");
    let store = Store::open(&nested, StoreOptions::default()).unwrap();
    deploy(&store, "shop", "v1");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(nested.join(DB_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let journal: String = peek_at(&nested)
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    // Only the database is left behind (no probe file); -wal and -shm
    // until the last connection closes.
    drop(store);
    let names: Vec<String> = fs::read_dir(&nested)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [DB_FILE_NAME]);
}

fn peek_at(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join(DB_FILE_NAME)).unwrap()
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = TempDir::new("newer");
    drop(open(&dir));
    peek(&dir).pragma_update(None, "user_version", 99).unwrap();
    let err = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    let db = dir.path().join(DB_FILE_NAME);
    assert_eq!(
        err.to_string(),
        format!(
            "the registry at {} was written by a newer isopod (schema 99)",
            db.display()
        )
    );
}

#[test]
fn unreadable_rows_are_reported_as_corrupt() {
    let dir = TempDir::new("corrupt");
    let store = open(&dir);
    deploy(&store, "shop", "v1");
    peek(&dir)
        .execute("UPDATE versions SET origin = 'telepathy'", [])
        .unwrap();
    let err = store.versions("shop").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }));
    assert_eq!(
        err.to_string(),
        "version 1 of app 'shop' in the registry has an unknown origin 'telepathy'"
    );
    peek(&dir)
        .execute(
            "UPDATE versions SET origin = 'api', manifest = '{not json'",
            [],
        )
        .unwrap();
    assert!(matches!(
        store.active("shop"),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn the_store_is_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();

    let dir = TempDir::new("threads");
    let store = open(&dir);
    std::thread::scope(|scope| {
        for t in 0..4 {
            let store = &store;
            scope.spawn(move || {
                for n in 0..5 {
                    deploy(store, &format!("app{t}"), &format!("v{n}"));
                }
            });
        }
    });
    for t in 0..4 {
        assert_eq!(active_number(&store, &format!("app{t}")), 5);
    }
}

#[test]
fn origins_have_lowercase_names() {
    for (origin, name) in [
        (Origin::Api, "api"),
        (Origin::Config, "config"),
        (Origin::Rollback, "rollback"),
        (Origin::Vars, "vars"),
    ] {
        assert_eq!(origin.as_str(), name);
        assert_eq!(origin.to_string(), name);
        assert_eq!(serde_json::to_value(origin).unwrap(), json!(name));
        assert_eq!(
            serde_json::from_value::<Origin>(json!(name)).unwrap(),
            origin
        );
    }
}

#[test]
fn a_snapshot_is_kept_beside_its_bundle_and_goes_with_it() {
    let dir = TempDir::new("snapshots");
    let store = open(&dir);
    let sha = sha256_hex(b"export default {}");
    // Not kept for a bundle the registry does not hold.
    assert!(!store.put_snapshot("k1", &sha, b"bytes").unwrap());
    assert_eq!(store.snapshot("k1").unwrap(), None);

    deploy(&store, "a", "export default {}");
    assert!(store.put_snapshot("k1", &sha, b"bytes").unwrap());
    assert!(store.put_snapshot("k1", &sha, b"newer").unwrap());
    assert_eq!(
        store.snapshot("k1").unwrap().as_deref(),
        Some(&b"newer"[..])
    );
    drop(store);
    let store = open(&dir);
    assert_eq!(
        store.snapshot("k1").unwrap().as_deref(),
        Some(&b"newer"[..])
    );

    // Removing the last version that uses the bundle removes its snapshots.
    assert!(store.remove_app("a").unwrap());
    assert_eq!(store.snapshot("k1").unwrap(), None);
    assert_eq!(count(&dir, "snapshots"), 0);
}
