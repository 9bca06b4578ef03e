//! The registry of apps' storage: KV namespaces and D1 databases by name,
//! under one data directory, shared by every app naming them.
//!
//! Layout of the data directory:
//! - `kv.sqlite3`: every KV namespace kept in SQLite ([`SqliteKvStore`]).
//! - `kv-cursor.key`: the secret KV list cursors are signed with, so
//!   cursors outlive restarts (owner-only).
//! - `d1/<name>.sqlite3`: one file per D1 database.
//!
//! KV namespaces kept in Redis live there, under their prefix.
//!
//! Handles are cached: two apps naming the same namespace or database get
//! clones of one handle (one writer, one thread). Namespaces and databases
//! outlive the apps using them; only [`Storage::delete_kv_namespace`] and
//! [`Storage::delete_d1_database`] remove them.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, OpenFlags};

use crate::d1::export::{self, ExportError};
use crate::d1::{D1Database, D1Options, VIRTUAL_TABLES};
use crate::kv::{CursorKey, KvBackend, KvNamespace, KvOptions, RedisKvStore, SqliteKvStore};
use crate::names;
use crate::storage_error::{StorageContext as _, StorageError};

/// The D1 directory's name inside the data directory.
pub const D1_DIR_NAME: &str = "d1";
/// The cursor key's file name inside the data directory.
pub const CURSOR_KEY_FILE_NAME: &str = "kv-cursor.key";
/// The extension of D1 database files.
const D1_EXTENSION: &str = "sqlite3";

const KV: &str = "KV namespace";
const D1: &str = "D1 database";

/// How [`Storage`] behaves.
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    /// The Redis server for namespaces on [`KvBackend::Redis`]
    /// (`redis://[user:password@]host:port[/db]`); without it, asking for
    /// one fails.
    pub redis_url: Option<String>,
    /// KV behaviour: clock, purge interval, Redis timeout.
    pub kv: KvOptions,
    /// D1 behaviour: time limit, result cap.
    pub d1: D1Options,
}

/// Apps' storage under one data directory. `Send + Sync`; share it.
#[derive(Debug)]
pub struct Storage {
    dir: PathBuf,
    d1_options: D1Options,
    kv_sqlite: SqliteKvStore,
    kv_redis: Option<RedisKvStore>,
    kv_handles: Mutex<HashMap<(KvBackend, String), KvNamespace>>,
    d1_handles: Mutex<HashMap<String, D1Database>>,
}

impl Storage {
    /// Opens (creating if needed) the storage in `data_dir`: its KV file,
    /// cursor key and D1 directory. Redis, if configured, is connected on
    /// first use, so an unreachable Redis fails calls, not this.
    pub fn open(data_dir: &Path, options: StorageOptions) -> Result<Storage, StorageError> {
        let d1_dir = data_dir.join(D1_DIR_NAME);
        std::fs::create_dir_all(&d1_dir).map_err(|source| StorageError::Io {
            context: "creating",
            path: d1_dir.clone(),
            source,
        })?;
        let cursor_key = CursorKey::load_or_create(&data_dir.join(CURSOR_KEY_FILE_NAME))?;
        let kv_sqlite = SqliteKvStore::open(data_dir, &options.kv, cursor_key.clone())?;
        let kv_redis = options
            .redis_url
            .as_deref()
            .map(|url| RedisKvStore::new(url, &options.kv, cursor_key.clone()))
            .transpose()?;
        Ok(Storage {
            dir: data_dir.to_path_buf(),
            d1_options: options.d1,
            kv_sqlite,
            kv_redis,
            kv_handles: Mutex::new(HashMap::new()),
            d1_handles: Mutex::new(HashMap::new()),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn redis(&self) -> Result<&RedisKvStore, StorageError> {
        self.kv_redis.as_ref().ok_or_else(|| {
            StorageError::Redis("no Redis is configured (StorageOptions::redis_url)".into())
        })
    }

    /// The KV namespace `name` on `backend`, created if new; the same
    /// handle for every caller naming it. The SQLite backend writes a row
    /// the first time a name is seen (briefly blocking).
    pub fn kv_namespace(
        &self,
        name: &str,
        backend: KvBackend,
    ) -> Result<KvNamespace, StorageError> {
        names::validate(KV, name)?;
        let mut handles = lock(&self.kv_handles);
        let key = (backend, name.to_owned());
        if let Some(handle) = handles.get(&key) {
            return Ok(handle.clone());
        }
        let handle = match backend {
            KvBackend::Sqlite => self.kv_sqlite.namespace(name)?,
            KvBackend::Redis => self.redis()?.namespace(name)?,
        };
        handles.insert(key, handle.clone());
        Ok(handle)
    }

    /// Every KV namespace, by backend then name (Redis's only if
    /// configured and reachable).
    pub async fn kv_namespaces(&self) -> Result<Vec<(KvBackend, String)>, StorageError> {
        let mut all: Vec<(KvBackend, String)> = self
            .kv_sqlite
            .namespaces()?
            .into_iter()
            .map(|name| (KvBackend::Sqlite, name))
            .collect();
        if let Some(redis) = &self.kv_redis {
            all.extend(
                redis
                    .namespaces()
                    .await?
                    .into_iter()
                    .map(|name| (KvBackend::Redis, name)),
            );
        }
        Ok(all)
    }

    /// Deletes KV namespace `name` on `backend` with all its entries; false
    /// if it did not exist. Handles apps still hold see it empty, and
    /// their writes to a SQLite namespace fail from then on.
    pub async fn delete_kv_namespace(
        &self,
        name: &str,
        backend: KvBackend,
    ) -> Result<bool, StorageError> {
        names::validate(KV, name)?;
        lock(&self.kv_handles).remove(&(backend, name.to_owned()));
        match backend {
            KvBackend::Sqlite => self.kv_sqlite.delete_namespace(name),
            KvBackend::Redis => self.redis()?.delete_namespace(name).await,
        }
    }

    /// Deletes every expired entry of the SQLite KV store now (it also
    /// does so periodically); answers how many.
    pub async fn purge_expired_kv(&self) -> Result<u64, StorageError> {
        self.kv_sqlite.purge_expired().await
    }

    fn d1_path(&self, name: &str) -> PathBuf {
        self.dir
            .join(D1_DIR_NAME)
            .join(format!("{name}.{D1_EXTENSION}"))
    }

    /// The file of D1 database `name`, a valid name of one that exists.
    fn existing_d1_path(&self, name: &str) -> Result<PathBuf, StorageError> {
        names::validate(D1, name)?;
        let path = self.d1_path(name);
        if !path.exists() {
            return Err(StorageError::NotFound {
                kind: D1,
                name: name.to_owned(),
            });
        }
        Ok(path)
    }

    /// The D1 database `name` (`d1/<name>.sqlite3`), created if new; the
    /// same handle for every caller naming it.
    pub fn d1_database(&self, name: &str) -> Result<D1Database, StorageError> {
        names::validate(D1, name)?;
        let mut handles = lock(&self.d1_handles);
        if let Some(handle) = handles.get(name) {
            return Ok(handle.clone());
        }
        let handle = D1Database::open(name, &self.d1_path(name), self.d1_options)?;
        handles.insert(name.to_owned(), handle.clone());
        Ok(handle)
    }

    /// Every D1 database's name, sorted.
    pub fn d1_databases(&self) -> Result<Vec<String>, StorageError> {
        let dir = self.dir.join(D1_DIR_NAME);
        let entries = std::fs::read_dir(&dir).map_err(|source| StorageError::Io {
            context: "listing",
            path: dir.clone(),
            source,
        })?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StorageError::Io {
                context: "listing",
                path: dir.clone(),
                source,
            })?;
            let file_name = entry.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|f| f.strip_suffix(&format!(".{D1_EXTENSION}")))
            else {
                continue;
            };
            if names::validate(D1, name).is_ok() {
                found.push(name.to_owned());
            }
        }
        found.sort();
        Ok(found)
    }

    /// Deletes D1 database `name` and its file; false if there was none.
    /// Refused while an app holds a handle on it.
    pub fn delete_d1_database(&self, name: &str) -> Result<bool, StorageError> {
        names::validate(D1, name)?;
        let mut handles = lock(&self.d1_handles);
        if let Some(handle) = handles.get(name) {
            // The cache's own handle and the one just taken.
            if handle.handles() > 1 {
                return Err(StorageError::InUse {
                    kind: D1,
                    name: name.to_owned(),
                });
            }
        }
        // Dropping the last handle ends the database's thread and closes
        // the file before it is removed.
        drop(handles.remove(name));
        let path = self.d1_path(name);
        let mut existed = false;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let file = PathBuf::from(file);
            match std::fs::remove_file(&file) {
                Ok(()) => existed |= suffix.is_empty(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StorageError::Io {
                        context: "removing",
                        path: file,
                        source,
                    })
                }
            }
        }
        Ok(existed)
    }

    /// `d1 export`: writes database `name` as SQL (schema, then rows as
    /// INSERTs, then indexes, triggers and views) to `out`, from a
    /// consistent snapshot while it stays in use. Blocks: call it off
    /// async threads.
    pub fn export_d1(&self, name: &str, out: &mut dyn Write) -> Result<(), StorageError> {
        const CONTEXT: &str = "exporting a D1 database";
        let path = self.existing_d1_path(name)?;
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .storage_context(CONTEXT)?;
        export::dump(&mut conn, out).map_err(|e| match e {
            ExportError::Sqlite(source) => StorageError::Sqlite {
                context: CONTEXT,
                source,
            },
            ExportError::Io(source) => StorageError::Io {
                context: "writing the export of",
                path,
                source,
            },
            ExportError::VirtualTables => StorageError::Unsupported(VIRTUAL_TABLES),
        })
    }

    /// Copies D1 database `name` to `dest` with SQLite's online backup,
    /// while it stays in use. Blocks: call it off async threads.
    pub fn backup_d1(&self, name: &str, dest: &Path) -> Result<(), StorageError> {
        crate::backup::copy(&self.existing_d1_path(name)?, dest)
    }

    /// Copies the SQLite KV file (every namespace kept there) to `dest`
    /// with SQLite's online backup. Blocks: call it off async threads.
    pub fn backup_kv(&self, dest: &Path) -> Result<(), StorageError> {
        crate::backup::copy(self.kv_sqlite.path(), dest)
    }
}

/// A handle cache, whatever a panic elsewhere left: the maps hold only
/// handles, never half-made state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::d1::Value;
    use crate::kv::tests::{RedisServer, TempDir};
    use crate::kv::PutOptions;

    fn open(dir: &TempDir) -> Storage {
        Storage::open(dir.path(), StorageOptions::default()).unwrap()
    }

    #[tokio::test]
    async fn handles_are_shared_and_outlive_apps() {
        let dir = TempDir::new("storage-shared");
        let storage = open(&dir);
        let a = storage.kv_namespace("cache", KvBackend::Sqlite).unwrap();
        let b = storage.kv_namespace("cache", KvBackend::Sqlite).unwrap();
        a.put("k", b"v".to_vec(), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(b.get("k").await.unwrap().unwrap().value, b"v");
        let db1 = storage.d1_database("main").unwrap();
        let db2 = storage.d1_database("main").unwrap();
        assert_eq!(db1.path(), db2.path());
        db1.exec("CREATE TABLE t (x);").await.unwrap();
        db2.prepare("INSERT INTO t VALUES (1)").run().await.unwrap();
        drop((a, b, db1, db2));

        // A restart finds them all.
        drop(storage);
        let storage = open(&dir);
        let kv = storage.kv_namespace("cache", KvBackend::Sqlite).unwrap();
        assert!(kv.get("k").await.unwrap().is_some());
        assert_eq!(storage.d1_databases().unwrap(), ["main"]);
        let x = storage
            .d1_database("main")
            .unwrap()
            .prepare("SELECT x FROM t")
            .first_column("x")
            .await
            .unwrap();
        assert_eq!(x, Some(Value::Integer(1)));
        assert_eq!(
            storage.kv_namespaces().await.unwrap(),
            [(KvBackend::Sqlite, "cache".to_owned())]
        );
    }

    #[tokio::test]
    async fn names_cannot_escape() {
        let dir = TempDir::new("storage-names");
        let storage = open(&dir);
        for name in [
            "../x", "..", ".", "", "a/b", "a\\b", ".hidden", "-x", "x y", "é",
        ] {
            let d1 = storage.d1_database(name).unwrap_err();
            assert!(
                matches!(d1, StorageError::InvalidName { .. }),
                "{name}: {d1}"
            );
            let kv = storage.kv_namespace(name, KvBackend::Sqlite).unwrap_err();
            assert!(
                matches!(kv, StorageError::InvalidName { .. }),
                "{name}: {kv}"
            );
        }
        assert_eq!(
            storage.d1_database("../x").unwrap_err().to_string(),
            "invalid D1 database name '../x': it must start with a letter, a digit or '_'"
        );
        assert!(storage.d1_database(&"a".repeat(65)).is_err());
        storage.d1_database(&"a".repeat(64)).unwrap();
        storage.d1_database("my_db-1.v2").unwrap();
        assert!(!dir.path().join("x.sqlite3").exists());
        // Redis is not configured.
        assert!(matches!(
            storage.kv_namespace("r", KvBackend::Redis).unwrap_err(),
            StorageError::Redis(_)
        ));
    }

    #[tokio::test]
    async fn deleting_namespaces_and_databases() {
        let dir = TempDir::new("storage-delete");
        let storage = open(&dir);
        let kv = storage.kv_namespace("gone", KvBackend::Sqlite).unwrap();
        kv.put("k", b"v".to_vec(), PutOptions::default())
            .await
            .unwrap();
        assert!(storage
            .delete_kv_namespace("gone", KvBackend::Sqlite)
            .await
            .unwrap());
        assert!(!storage
            .delete_kv_namespace("gone", KvBackend::Sqlite)
            .await
            .unwrap());
        assert_eq!(kv.get("k").await.unwrap(), None);
        assert!(kv.put("k", vec![], PutOptions::default()).await.is_err());
        // Named again, it starts empty.
        let again = storage.kv_namespace("gone", KvBackend::Sqlite).unwrap();
        assert_eq!(again.get("k").await.unwrap(), None);
        again.put("k", vec![], PutOptions::default()).await.unwrap();

        let db = storage.d1_database("old").unwrap();
        db.exec("CREATE TABLE t (x);").await.unwrap();
        let e = storage.delete_d1_database("old").unwrap_err();
        assert!(matches!(e, StorageError::InUse { .. }), "{e}");
        drop(db);
        assert!(storage.delete_d1_database("old").unwrap());
        assert!(!storage.delete_d1_database("old").unwrap());
        assert!(storage.d1_databases().unwrap().is_empty());
        assert!(!dir.path().join("d1/old.sqlite3").exists());
    }

    #[tokio::test]
    async fn export_rebuilds_the_database() {
        let dir = TempDir::new("storage-export");
        let storage = open(&dir);
        let db = storage.d1_database("src").unwrap();
        db.exec(
            "CREATE TABLE people (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, score REAL, photo BLOB, \"odd \"\"col\" TEXT);\nCREATE INDEX people_by_name ON people(name);\nCREATE VIEW named AS SELECT name FROM people WHERE name IS NOT NULL;",
        )
        .await
        .unwrap();
        let insert = db.prepare(
            "INSERT INTO people (name, score, photo, \"odd \"\"col\") VALUES (?, ?, ?, ?)",
        );
        let rows = [
            [
                Value::from("it's"),
                Value::Real(0.1),
                Value::Blob(vec![0, 255, 7]),
                Value::Null,
            ],
            [
                Value::from("two\nlines\r\n and \\n"),
                Value::Real(2.0),
                Value::Null,
                Value::from("x"),
            ],
            [
                Value::Null,
                Value::Real(-1.5e300),
                Value::Blob(vec![]),
                Value::from(""),
            ],
        ];
        for row in rows {
            insert.bind(row).run().await.unwrap();
        }
        db.prepare("DELETE FROM people WHERE id = 3")
            .run()
            .await
            .unwrap();
        db.prepare("INSERT INTO people (name, score) VALUES (9007199254740993, 1)")
            .run()
            .await
            .unwrap();

        let mut dump = Vec::new();
        storage.export_d1("src", &mut dump).unwrap();
        let dump = String::from_utf8(dump).unwrap();
        assert!(dump.starts_with("PRAGMA defer_foreign_keys=TRUE;\nCREATE TABLE people"));
        assert!(dump.contains("DELETE FROM sqlite_sequence;"));
        assert!(dump.contains("char(10)"));

        // The dump runs through exec (one statement per line) into a new
        // database that reads the same.
        let copy = storage.d1_database("copy").unwrap();
        copy.exec(&dump).await.unwrap();
        let read =
            "SELECT id, name, score, typeof(score), photo, \"odd \"\"col\" FROM people ORDER BY id";
        assert_eq!(
            copy.prepare(read).raw(true).await.unwrap(),
            db.prepare(read).raw(true).await.unwrap()
        );
        let seq = "SELECT seq FROM sqlite_sequence WHERE name = 'people'";
        assert_eq!(
            copy.prepare(seq).first_column("seq").await.unwrap(),
            Some(Value::Integer(4))
        );
        let named = copy
            .prepare("SELECT count(*) AS n FROM named")
            .first_column("n")
            .await;
        assert_eq!(named.unwrap(), Some(Value::Integer(3)));

        db.exec("CREATE VIRTUAL TABLE docs USING fts5(body);")
            .await
            .unwrap();
        let e = storage.export_d1("src", &mut Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), VIRTUAL_TABLES);
        assert!(matches!(
            storage.export_d1("nope", &mut Vec::new()).unwrap_err(),
            StorageError::NotFound { .. }
        ));
    }

    #[tokio::test]
    async fn online_backups() {
        let dir = TempDir::new("storage-backup");
        let storage = open(&dir);
        let db = storage.d1_database("live").unwrap();
        db.exec("CREATE TABLE t (x);").await.unwrap();
        db.prepare("INSERT INTO t VALUES (42)").run().await.unwrap();
        let kv = storage.kv_namespace("ns", KvBackend::Sqlite).unwrap();
        kv.put("k", b"v".to_vec(), PutOptions::default())
            .await
            .unwrap();

        let backups = TempDir::new("storage-backup-out");
        let d1_copy = backups.path().join("nested/live.sqlite3");
        storage.backup_d1("live", &d1_copy).unwrap();
        let kv_copy = backups.path().join("kv.sqlite3");
        storage.backup_kv(&kv_copy).unwrap();
        // Still in use after.
        db.prepare("INSERT INTO t VALUES (43)").run().await.unwrap();

        let copy = Connection::open(&d1_copy).unwrap();
        let x: Vec<i64> = copy
            .prepare("SELECT x FROM t")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(x, [42]);
        // The KV copy opens as a store of its own with the same entries.
        let restored = TempDir::new("storage-backup-restore");
        std::fs::copy(&kv_copy, restored.path().join("kv.sqlite3")).unwrap();
        std::fs::copy(
            dir.path().join(CURSOR_KEY_FILE_NAME),
            restored.path().join(CURSOR_KEY_FILE_NAME),
        )
        .unwrap();
        let storage2 = Storage::open(restored.path(), StorageOptions::default()).unwrap();
        let kv2 = storage2.kv_namespace("ns", KvBackend::Sqlite).unwrap();
        assert_eq!(kv2.get("k").await.unwrap().unwrap().value, b"v");
        assert!(storage.backup_d1("nope", &d1_copy).is_err());
    }

    #[tokio::test]
    async fn redis_namespaces_through_storage() {
        let dir = TempDir::new("storage-redis");
        let Some(server) = RedisServer::start(dir.path()) else {
            return;
        };
        let storage = Storage::open(
            dir.path(),
            StorageOptions {
                redis_url: Some(server.url()),
                ..StorageOptions::default()
            },
        )
        .unwrap();
        let on_redis = storage.kv_namespace("same", KvBackend::Redis).unwrap();
        let on_sqlite = storage.kv_namespace("same", KvBackend::Sqlite).unwrap();
        on_redis
            .put("k", b"redis".to_vec(), PutOptions::default())
            .await
            .unwrap();
        on_sqlite
            .put("k", b"sqlite".to_vec(), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(on_redis.get("k").await.unwrap().unwrap().value, b"redis");
        assert_eq!(on_sqlite.get("k").await.unwrap().unwrap().value, b"sqlite");
        assert_eq!(
            storage.kv_namespaces().await.unwrap(),
            [
                (KvBackend::Sqlite, "same".to_owned()),
                (KvBackend::Redis, "same".to_owned())
            ]
        );
        assert!(storage
            .delete_kv_namespace("same", KvBackend::Redis)
            .await
            .unwrap());
        assert_eq!(on_redis.get("k").await.unwrap(), None);
        assert!(on_sqlite.get("k").await.unwrap().is_some());
    }
}
