//! One suite for every KV backend: each test is a function of a
//! [`Fixture`], instantiated per backend by `kv_suite!`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::limits::{MAX_KEY_SIZE, MAX_METADATA_SIZE, MAX_VALUE_SIZE};
use super::*;
use crate::clock::Clock;

/// A directory under the system temp dir, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "isopod-kv-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Real time, so Redis's own expiry (real seconds) never fires before the
/// test's clock says so.
fn test_clock() -> Clock {
    Clock::manual(crate::store::now_ms())
}

/// Two namespaces of one store, on a settable clock.
pub(crate) struct Fixture {
    clock: Clock,
    ns: KvNamespace,
    other: KvNamespace,
    /// Opens the store anew (a restart), for backends that persist.
    reopen: Option<Box<dyn Fn() -> KvNamespace>>,
    sqlite: Option<SqliteKvStore>,
    _dir: TempDir,
}

fn sqlite_fixture(name: &str) -> Fixture {
    let dir = TempDir::new(name);
    let clock = test_clock();
    let options = KvOptions {
        clock: clock.clone(),
        ..KvOptions::default()
    };
    let key = CursorKey::random().unwrap();
    let store = SqliteKvStore::open(dir.path(), &options, key.clone()).unwrap();
    let path = dir.path().to_path_buf();
    let reopen = move || {
        SqliteKvStore::open(&path, &options, key.clone())
            .unwrap()
            .namespace("main")
            .unwrap()
    };
    Fixture {
        clock,
        ns: store.namespace("main").unwrap(),
        other: store.namespace("other").unwrap(),
        reopen: Some(Box::new(reopen)),
        sqlite: Some(store),
        _dir: dir,
    }
}

/// A `redis-server` of the test's own, on a free loopback port, with no
/// persistence, in a temp dir; killed when dropped.
pub(crate) struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one, or `None` (saying so) when `redis-server` is not
    /// installed, except under CI (`CI` set, as `.ci/run` sets it), which
    /// installs it: there a missing server fails the test rather than
    /// passing it untested.
    pub(crate) fn start(dir: &Path) -> Option<RedisServer> {
        let installed = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok();
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed (.ci/run installs it)"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        server.restart();
        Some(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) and waits until it answers PING.
    pub(crate) fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills the server and waits for it to be gone.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redis_options(clock: &Clock) -> KvOptions {
    KvOptions {
        clock: clock.clone(),
        ..KvOptions::default()
    }
}

fn redis_fixture(name: &str) -> Option<(Fixture, RedisServer)> {
    let dir = TempDir::new(name);
    let server = RedisServer::start(dir.path())?;
    let clock = test_clock();
    let key = CursorKey::random().unwrap();
    let store = RedisKvStore::new(&server.url(), &redis_options(&clock), key.clone()).unwrap();
    let (url, options) = (server.url(), redis_options(&clock));
    let reopen = move || {
        RedisKvStore::new(&url, &options, key.clone())
            .unwrap()
            .namespace("main")
            .unwrap()
    };
    let fixture = Fixture {
        clock,
        ns: store.namespace("main").unwrap(),
        other: store.namespace("other").unwrap(),
        reopen: Some(Box::new(reopen)),
        sqlite: None,
        _dir: dir,
    };
    Some((fixture, server))
}

macro_rules! kv_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    let fixture = super::sqlite_fixture(stringify!($test));
                    super::$test(&fixture).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $test() {
                    let Some((fixture, _server)) = super::redis_fixture(stringify!($test)) else {
                        return;
                    };
                    super::$test(&fixture).await;
                }
            )*

            #[tokio::test]
            async fn outage_fails_fast_then_recovers() {
                let Some((fixture, server)) = super::redis_fixture("outage") else {
                    return;
                };
                super::outage_fails_fast_then_recovers(&fixture, server).await;
            }

            #[tokio::test]
            async fn vanished_entries_leave_the_index() {
                let Some((fixture, server)) = super::redis_fixture("vanished") else {
                    return;
                };
                super::redis_vanished_entries_leave_the_index(&fixture, &server).await;
            }

            #[tokio::test]
            async fn namespaces_listed_and_deleted() {
                super::redis_namespaces_listed_and_deleted().await;
            }
        }
    };
}

kv_suite!(
    put_get_delete,
    values_of_every_size,
    metadata_round_trips,
    expiration_hides_then_purges,
    expiration_limits,
    key_limits,
    value_and_metadata_limits,
    get_many,
    get_many_limits,
    list_in_byte_order_with_prefix,
    list_pages_2500_keys,
    list_limits_and_metadata,
    namespaces_are_isolated,
    cursors_are_bound_to_their_namespace,
    durable_across_reopen,
    concurrent_writes_all_land,
);

fn opts() -> PutOptions {
    PutOptions::default()
}

fn message(e: KvError) -> String {
    e.to_string()
}

async fn put_get_delete(f: &Fixture) {
    assert_eq!(f.ns.get("a").await.unwrap(), None);
    f.ns.put("a", b"one".to_vec(), opts()).await.unwrap();
    let entry = f.ns.get("a").await.unwrap().unwrap();
    assert_eq!(entry.value, b"one");
    assert_eq!(entry.metadata, None);
    assert_eq!(entry.expiration, None);
    f.ns.put("a", b"two".to_vec(), opts()).await.unwrap();
    assert_eq!(f.ns.get("a").await.unwrap().unwrap().value, b"two");
    f.ns.delete("a").await.unwrap();
    assert_eq!(f.ns.get("a").await.unwrap(), None);
    // Deleting what is not there succeeds.
    f.ns.delete("a").await.unwrap();
    // Keys are any UTF-8, including what would be syntax elsewhere.
    for key in ["é/ü", "a' OR 1=1; --", "%_*?[", "x\0y", "  "] {
        f.ns.put(key, key.as_bytes().to_vec(), opts())
            .await
            .unwrap();
        assert_eq!(f.ns.get(key).await.unwrap().unwrap().value, key.as_bytes());
    }
}

async fn values_of_every_size(f: &Fixture) {
    for size in [0usize, 1, 1000, 1 << 20, MAX_VALUE_SIZE] {
        let value: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let key = format!("v{size}");
        f.ns.put(&key, value.clone(), opts()).await.unwrap();
        let got = f.ns.get(&key).await.unwrap().unwrap();
        assert_eq!(got.value.len(), size);
        assert!(got.value == value, "value of {size} bytes differs");
    }
    let too_big = vec![0u8; MAX_VALUE_SIZE + 1];
    let e = f.ns.put("big", too_big, opts()).await.unwrap_err();
    assert_eq!(
        message(e),
        "KV PUT failed: 413 Value length of 26214401 exceeds limit of 26214400."
    );
    assert_eq!(f.ns.get("big").await.unwrap(), None);
}

async fn metadata_round_trips(f: &Fixture) {
    let metadata = r#"{"n":1,"s":"x","nested":{"a":[1,2,null]}}"#.to_owned();
    f.ns.put(
        "m",
        b"v".to_vec(),
        PutOptions {
            metadata: Some(metadata.clone()),
            ..opts()
        },
    )
    .await
    .unwrap();
    let entry = f.ns.get("m").await.unwrap().unwrap();
    assert_eq!(entry.metadata.as_deref(), Some(metadata.as_str()));
    // A put without metadata drops the old metadata, as Workers does.
    f.ns.put("m", b"v".to_vec(), opts()).await.unwrap();
    assert_eq!(f.ns.get("m").await.unwrap().unwrap().metadata, None);
    // Metadata may be any JSON value, `null` included.
    f.ns.put(
        "m",
        b"v".to_vec(),
        PutOptions {
            metadata: Some("null".into()),
            ..opts()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        f.ns.get("m").await.unwrap().unwrap().metadata.as_deref(),
        Some("null")
    );
}

async fn expiration_hides_then_purges(f: &Fixture) {
    let now = f.clock.now_secs();
    f.ns.put(
        "ttl",
        b"v".to_vec(),
        PutOptions {
            expiration_ttl: Some(60),
            ..opts()
        },
    )
    .await
    .unwrap();
    f.ns.put(
        "abs",
        b"v".to_vec(),
        PutOptions {
            expiration: Some(now as i64 + 120),
            metadata: Some("1".into()),
            ..opts()
        },
    )
    .await
    .unwrap();
    f.ns.put("forever", b"v".to_vec(), opts()).await.unwrap();
    assert_eq!(
        f.ns.get("ttl").await.unwrap().unwrap().expiration,
        Some(now + 60)
    );
    let listed = f.ns.list(ListOptions::default()).await.unwrap();
    let expirations: Vec<_> = listed
        .keys
        .iter()
        .map(|k| (k.name.as_str(), k.expiration))
        .collect();
    assert_eq!(
        expirations,
        [
            ("abs", Some(now + 120)),
            ("forever", None),
            ("ttl", Some(now + 60))
        ]
    );

    // One second before: still there. At the expiration: gone at once.
    f.clock.advance(Duration::from_secs(59));
    assert!(f.ns.get("ttl").await.unwrap().is_some());
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.ns.get("ttl").await.unwrap(), None);
    let names = |r: ListResult| r.keys.into_iter().map(|k| k.name).collect::<Vec<_>>();
    assert_eq!(
        names(f.ns.list(ListOptions::default()).await.unwrap()),
        ["abs", "forever"]
    );
    let many = f.ns.get_many(&["ttl".into(), "abs".into()]).await.unwrap();
    assert_eq!(many[0].1, None);
    assert!(many[1].1.is_some());

    f.clock.advance(Duration::from_secs(60));
    assert_eq!(f.ns.get("abs").await.unwrap(), None);
    assert_eq!(
        names(f.ns.list(ListOptions::default()).await.unwrap()),
        ["forever"]
    );

    // Purging removes the rows for good; a re-put is a fresh entry.
    if let Some(store) = &f.sqlite {
        assert_eq!(store.purge_expired().await.unwrap(), 2);
        assert_eq!(store.purge_expired().await.unwrap(), 0);
    }
    f.ns.put("ttl", b"again".to_vec(), opts()).await.unwrap();
    assert_eq!(f.ns.get("ttl").await.unwrap().unwrap().expiration, None);
}

async fn expiration_limits(f: &Fixture) {
    let now = f.clock.now_secs() as i64;
    let put = |expiration: Option<i64>, expiration_ttl: Option<i64>| {
        f.ns.put(
            "k",
            b"v".to_vec(),
            PutOptions {
                expiration,
                expiration_ttl,
                metadata: None,
            },
        )
    };
    assert_eq!(
        message(put(None, Some(59)).await.unwrap_err()),
        "KV PUT failed: 400 Invalid expiration_ttl of 59. Expiration TTL must be at least 60."
    );
    assert_eq!(
        message(put(None, Some(0)).await.unwrap_err()),
        "KV PUT failed: 400 Invalid expiration_ttl of 0. Please specify integer greater than 0."
    );
    assert_eq!(
        message(put(Some(now), None).await.unwrap_err()),
        format!("KV PUT failed: 400 Invalid expiration of {now}. Please specify integer greater than the current number of seconds since the UNIX epoch.")
    );
    assert_eq!(
        message(put(Some(now + 59), None).await.unwrap_err()),
        format!(
            "KV PUT failed: 400 Invalid expiration of {}. Expiration times must be at least 60 seconds in the future.",
            now + 59
        )
    );
    put(Some(now + 60), None).await.unwrap();
    put(None, Some(60)).await.unwrap();
    assert_eq!(
        f.ns.get("k").await.unwrap().unwrap().expiration,
        Some(now as u64 + 60)
    );
}

async fn key_limits(f: &Fixture) {
    let e = f.ns.get("").await.unwrap_err();
    assert_eq!(e.js_class(), JsErrorClass::TypeError);
    assert_eq!(message(e), "Key name cannot be empty.");
    assert_eq!(
        message(f.ns.put(".", vec![], opts()).await.unwrap_err()),
        "\".\" is not allowed as a key name."
    );
    assert_eq!(
        message(f.ns.delete("..").await.unwrap_err()),
        "\"..\" is not allowed as a key name."
    );
    let longest = "k".repeat(MAX_KEY_SIZE);
    f.ns.put(&longest, b"v".to_vec(), opts()).await.unwrap();
    assert!(f.ns.get(&longest).await.unwrap().is_some());
    let too_long = "k".repeat(MAX_KEY_SIZE + 1);
    let e = f.ns.get(&too_long).await.unwrap_err();
    assert_eq!(e.js_class(), JsErrorClass::Error);
    assert_eq!(
        message(e),
        "KV GET failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512."
    );
    // Bytes count, not characters: 171 three-byte characters are 513 bytes.
    let wide = "€".repeat(171);
    assert_eq!(
        message(f.ns.put(&wide, vec![], opts()).await.unwrap_err()),
        "KV PUT failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512."
    );
    assert_eq!(
        message(f.ns.delete(&too_long).await.unwrap_err()),
        "KV DELETE failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512."
    );
    let prefix = ListOptions {
        prefix: Some(too_long),
        ..ListOptions::default()
    };
    assert_eq!(
        message(f.ns.list(prefix).await.unwrap_err()),
        "KV GET failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512."
    );
}

async fn value_and_metadata_limits(f: &Fixture) {
    // 1024 bytes of JSON: a string of 1022 characters and its quotes.
    let largest = format!("\"{}\"", "m".repeat(MAX_METADATA_SIZE - 2));
    f.ns.put(
        "k",
        b"v".to_vec(),
        PutOptions {
            metadata: Some(largest.clone()),
            ..opts()
        },
    )
    .await
    .unwrap();
    let too_large = format!("\"{}\"", "m".repeat(MAX_METADATA_SIZE - 1));
    let e =
        f.ns.put(
            "k",
            b"v".to_vec(),
            PutOptions {
                metadata: Some(too_large),
                ..opts()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        message(e),
        "KV PUT failed: 413 Metadata length of 1025 exceeds limit of 1024."
    );
    assert_eq!(
        f.ns.get("k").await.unwrap().unwrap().metadata.as_deref(),
        Some(largest.as_str())
    );
}

async fn get_many(f: &Fixture) {
    f.ns.put(
        "a",
        b"1".to_vec(),
        PutOptions {
            metadata: Some("{\"x\":1}".into()),
            ..opts()
        },
    )
    .await
    .unwrap();
    f.ns.put("b", b"2".to_vec(), opts()).await.unwrap();
    f.other.put("c", b"3".to_vec(), opts()).await.unwrap();
    let keys: Vec<String> = ["b", "missing", "a", "b", "c"].map(String::from).to_vec();
    let got = f.ns.get_many(&keys).await.unwrap();
    type Got<'a> = (&'a str, Option<&'a [u8]>, Option<&'a str>);
    let got: Vec<Got<'_>> = got
        .iter()
        .map(|(k, e)| {
            (
                k.as_str(),
                e.as_ref().map(|e| e.value.as_slice()),
                e.as_ref().and_then(|e| e.metadata.as_deref()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("b", Some(&b"2"[..]), None),
            ("missing", None, None),
            ("a", Some(&b"1"[..]), Some("{\"x\":1}")),
            // "c" is the other namespace's.
            ("c", None, None),
        ]
    );
}

async fn get_many_limits(f: &Fixture) {
    let hundred: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    assert_eq!(f.ns.get_many(&hundred).await.unwrap().len(), 100);
    let too_many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    assert_eq!(
        message(f.ns.get_many(&too_many).await.unwrap_err()),
        "KV GET_BULK failed: 400 You can request a maximum of 100 keys"
    );
    assert_eq!(
        message(f.ns.get_many(&[]).await.unwrap_err()),
        "KV GET_BULK failed: 400 You must request a minimum of 1 key"
    );
    assert_eq!(
        message(f.ns.get_many(&["".into()]).await.unwrap_err()),
        "KV GET_BULK failed: 400 Key names must not be empty"
    );
    assert_eq!(
        message(f.ns.get_many(&["..".into()]).await.unwrap_err()),
        "KV GET_BULK failed: 400 Illegal key name \"..\". Please use a different name."
    );
    // Two values of 13 MiB: more than 25 MiB together.
    let half = vec![7u8; 13 * 1024 * 1024];
    f.ns.put("h1", half.clone(), opts()).await.unwrap();
    f.ns.put("h2", half, opts()).await.unwrap();
    assert_eq!(f.ns.get_many(&["h1".into()]).await.unwrap().len(), 1);
    assert_eq!(
        message(
            f.ns.get_many(&["h1".into(), "h2".into()])
                .await
                .unwrap_err()
        ),
        "KV GET_BULK failed: 413 Total size of request exceeds the limit of 25MB"
    );
}

async fn list_in_byte_order_with_prefix(f: &Fixture) {
    // Byte order of UTF-8: uppercase before lowercase, "é" (C3 A9) after
    // "z", "\u{10000}" (F0 ..) after "\u{FFFF}" (EF ..), a prefix before
    // its extensions.
    let keys = [
        "b",
        "a",
        "ab",
        "B",
        "é",
        "z",
        "\u{FFFF}",
        "\u{10000}",
        "a/1",
        "a/2",
        "a0",
    ];
    for key in keys {
        f.ns.put(key, vec![], opts()).await.unwrap();
    }
    let names = |r: ListResult| r.keys.into_iter().map(|k| k.name).collect::<Vec<_>>();
    let all = f.ns.list(ListOptions::default()).await.unwrap();
    assert!(all.list_complete);
    assert_eq!(all.cursor, None);
    assert_eq!(
        names(all),
        [
            "B",
            "a",
            "a/1",
            "a/2",
            "a0",
            "ab",
            "b",
            "z",
            "é",
            "\u{FFFF}",
            "\u{10000}"
        ]
    );
    let under_a = ListOptions {
        prefix: Some("a".into()),
        ..ListOptions::default()
    };
    assert_eq!(
        names(f.ns.list(under_a).await.unwrap()),
        ["a", "a/1", "a/2", "a0", "ab"]
    );
    let under_slash = ListOptions {
        prefix: Some("a/".into()),
        ..ListOptions::default()
    };
    assert_eq!(names(f.ns.list(under_slash).await.unwrap()), ["a/1", "a/2"]);
    // A prefix of LIKE and glob syntax matches only itself.
    for prefix in ["%", "_", "*", "a*", "["] {
        let options = ListOptions {
            prefix: Some(prefix.into()),
            ..ListOptions::default()
        };
        assert!(
            f.ns.list(options).await.unwrap().keys.is_empty(),
            "{prefix}"
        );
    }
    let multibyte = ListOptions {
        prefix: Some("\u{FFFF}".into()),
        ..ListOptions::default()
    };
    assert_eq!(names(f.ns.list(multibyte).await.unwrap()), ["\u{FFFF}"]);
}

async fn list_pages_2500_keys(f: &Fixture) {
    for i in 0..2500 {
        f.ns.put(&format!("key{i:05}"), vec![], opts())
            .await
            .unwrap();
    }
    let mut cursor = None;
    let mut pages = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page =
            f.ns.list(ListOptions {
                cursor: cursor.clone(),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        pages.push(page.keys.len());
        seen.extend(page.keys.into_iter().map(|k| k.name));
        assert_eq!(page.list_complete, page.cursor.is_none());
        if page.list_complete {
            break;
        }
        cursor = page.cursor;
    }
    assert_eq!(pages, [1000, 1000, 500]);
    let expected: Vec<String> = (0..2500).map(|i| format!("key{i:05}")).collect();
    assert_eq!(seen, expected);

    // Pages of an exact multiple: the last full page says whether more
    // follow, so 2000 keys in pages of 1000 end on the second.
    for i in 2000..2500 {
        f.ns.delete(&format!("key{i:05}")).await.unwrap();
    }
    let first = f.ns.list(ListOptions::default()).await.unwrap();
    let second =
        f.ns.list(ListOptions {
            cursor: first.cursor,
            ..ListOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(second.keys.len(), 1000);
    assert!(second.list_complete);
}

async fn list_limits_and_metadata(f: &Fixture) {
    for (i, key) in ["p1", "p2", "p3", "q1"].iter().enumerate() {
        f.ns.put(
            key,
            vec![],
            PutOptions {
                metadata: Some(format!("{{\"i\":{i}}}")),
                ..opts()
            },
        )
        .await
        .unwrap();
    }
    let page =
        f.ns.list(ListOptions {
            prefix: Some("p".into()),
            limit: Some(2),
            cursor: None,
        })
        .await
        .unwrap();
    assert_eq!(
        page.keys,
        [
            ListKey {
                name: "p1".into(),
                expiration: None,
                metadata: Some("{\"i\":0}".into())
            },
            ListKey {
                name: "p2".into(),
                expiration: None,
                metadata: Some("{\"i\":1}".into())
            },
        ]
    );
    assert!(!page.list_complete);
    let rest =
        f.ns.list(ListOptions {
            prefix: Some("p".into()),
            limit: Some(2),
            cursor: page.cursor,
        })
        .await
        .unwrap();
    assert_eq!(rest.keys.len(), 1);
    assert_eq!(rest.keys[0].name, "p3");
    assert!(rest.list_complete);

    let limit = |limit| {
        f.ns.list(ListOptions {
            limit: Some(limit),
            ..ListOptions::default()
        })
    };
    assert_eq!(limit(1000).await.unwrap().keys.len(), 4);
    assert_eq!(
        message(limit(1001).await.unwrap_err()),
        "KV GET failed: 400 Invalid key_count_limit of 1001. Please specify an integer less than 1000."
    );
    assert_eq!(
        message(limit(0).await.unwrap_err()),
        "KV GET failed: 400 Invalid key_count_limit of 0. Please specify an integer greater than 0."
    );
}

async fn namespaces_are_isolated(f: &Fixture) {
    f.ns.put("shared", b"mine".to_vec(), opts()).await.unwrap();
    f.other
        .put("shared", b"theirs".to_vec(), opts())
        .await
        .unwrap();
    f.other
        .put("secret", b"theirs".to_vec(), opts())
        .await
        .unwrap();
    assert_eq!(f.ns.get("shared").await.unwrap().unwrap().value, b"mine");
    assert_eq!(
        f.other.get("shared").await.unwrap().unwrap().value,
        b"theirs"
    );
    // Keys that would name the other namespace if concatenated unsafely.
    for key in [
        "other/secret",
        "../other/secret",
        "other:secret",
        ":5:other:k:secret",
        "5:other:k:secret",
        "k:secret",
        "' OR ns = 2 --",
    ] {
        assert_eq!(f.ns.get(key).await.unwrap(), None, "{key}");
    }
    f.ns.delete("secret").await.unwrap();
    assert!(f.other.get("secret").await.unwrap().is_some());
    let names = |r: ListResult| r.keys.into_iter().map(|k| k.name).collect::<Vec<_>>();
    assert_eq!(
        names(f.ns.list(ListOptions::default()).await.unwrap()),
        ["shared"]
    );
    for prefix in ["", "s", "other", "%", "*", "\u{0}"] {
        let listed =
            f.ns.list(ListOptions {
                prefix: Some(prefix.into()),
                ..ListOptions::default()
            })
            .await
            .unwrap();
        assert!(
            listed.keys.iter().all(|k| k.name == "shared"),
            "prefix {prefix:?} listed {:?}",
            listed.keys
        );
    }
}

async fn cursors_are_bound_to_their_namespace(f: &Fixture) {
    for i in 0..4 {
        f.ns.put(&format!("k{i}"), vec![], opts()).await.unwrap();
        f.other.put(&format!("k{i}"), vec![], opts()).await.unwrap();
    }
    let two = ListOptions {
        limit: Some(2),
        ..ListOptions::default()
    };
    let page = f.other.list(two.clone()).await.unwrap();
    let theirs = page.cursor.unwrap();
    // The other namespace's cursor lists this namespace from its start
    // (as miniflare treats a cursor it cannot read): nothing of the other
    // namespace's shows...
    let foreign = ListOptions {
        cursor: Some(theirs.clone()),
        ..two.clone()
    };
    let listed = f.ns.list(foreign).await.unwrap();
    assert_eq!(listed.keys[0].name, "k0");
    // ...and it works where it came from.
    let resumed = ListOptions {
        cursor: Some(theirs.clone()),
        ..two.clone()
    };
    assert_eq!(f.other.list(resumed).await.unwrap().keys[0].name, "k2");
    // Forged and tampered cursors are the start too: a cursor naming a key
    // cannot move the listing on, even in its own namespace.
    let mut tampered = theirs.into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    use base64::Engine as _;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"\x01k1aaaaaaaaaaaaaaaa");
    for cursor in [tampered, forged, "!!!".into(), "AQ".into()] {
        let options = ListOptions {
            cursor: Some(cursor.clone()),
            ..two.clone()
        };
        assert_eq!(
            f.ns.list(options).await.unwrap().keys[0].name,
            "k0",
            "{cursor}"
        );
    }
}

async fn durable_across_reopen(f: &Fixture) {
    let Some(reopen) = &f.reopen else {
        return;
    };
    f.ns.put(
        "kept",
        b"value".to_vec(),
        PutOptions {
            metadata: Some("[1]".into()),
            expiration_ttl: Some(3600),
            expiration: None,
        },
    )
    .await
    .unwrap();
    f.ns.put("first", vec![], opts()).await.unwrap();
    let page =
        f.ns.list(ListOptions {
            limit: Some(1),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(page.keys[0].name, "first");
    let reopened = reopen();
    let entry = reopened.get("kept").await.unwrap().unwrap();
    assert_eq!(entry.value, b"value");
    assert_eq!(entry.metadata.as_deref(), Some("[1]"));
    assert!(entry.expiration.is_some());
    // A cursor outlives the restart (the key is the store's, not the
    // process's).
    let resumed = reopened
        .list(ListOptions {
            cursor: page.cursor,
            ..ListOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(resumed.keys[0].name, "kept");
}

async fn outage_fails_fast_then_recovers(f: &Fixture, mut server: RedisServer) {
    f.ns.put("k", b"v".to_vec(), opts()).await.unwrap();
    server.stop();
    let timeout = KvOptions::default().redis_timeout;
    let slack = Duration::from_millis(1500);

    let started = std::time::Instant::now();
    let e = f.ns.get("k").await.unwrap_err();
    assert!(
        started.elapsed() < timeout + slack,
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(e, KvError::Unavailable { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("KV GET failed: 503 KV storage unavailable: "),
        "{e}"
    );

    // Calls made together fail together, not one timeout after another.
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let ns = f.ns.clone();
            tokio::spawn(async move {
                ns.put(&format!("p{i}"), vec![], PutOptions::default())
                    .await
            })
        })
        .collect();
    for call in calls {
        let e = call.await.unwrap().unwrap_err();
        assert!(e.to_string().starts_with("KV PUT failed: 503 "), "{e}");
    }
    assert!(
        started.elapsed() < timeout + slack,
        "took {:?}",
        started.elapsed()
    );

    // Back up: calls succeed again once the manager has reconnected.
    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match f.ns.put("after", b"back".to_vec(), opts()).await {
            Ok(()) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "still failing: {e}"),
        }
    }
    assert_eq!(f.ns.get("after").await.unwrap().unwrap().value, b"back");
    // The server kept nothing (no persistence): the old key is gone.
    assert_eq!(f.ns.get("k").await.unwrap(), None);
}

async fn redis_namespaces_listed_and_deleted() {
    let dir = TempDir::new("redis-admin");
    let Some(server) = RedisServer::start(dir.path()) else {
        return;
    };
    let clock = test_clock();
    let store = RedisKvStore::new(
        &server.url(),
        &redis_options(&clock),
        CursorKey::random().unwrap(),
    )
    .unwrap();
    let a = store.namespace("a").unwrap();
    let b = store.namespace("b.b").unwrap();
    a.put("x", b"1".to_vec(), opts()).await.unwrap();
    b.put("x", b"2".to_vec(), opts()).await.unwrap();
    assert_eq!(store.namespaces().await.unwrap(), ["a", "b.b"]);
    assert!(store.delete_namespace("a").await.unwrap());
    assert_eq!(a.get("x").await.unwrap(), None);
    assert_eq!(b.get("x").await.unwrap().unwrap().value, b"2");
    assert_eq!(store.namespaces().await.unwrap(), ["b.b"]);
    assert!(!store.delete_namespace("a").await.unwrap());
    assert!(store.namespace("../x").is_err());
}

/// Redis expiring an entry's hash (simulated by deleting it behind the
/// store's back) hides the key from lists and prunes it from the index.
async fn redis_vanished_entries_leave_the_index(f: &Fixture, server: &RedisServer) {
    for key in ["a", "b", "c"] {
        f.ns.put(key, vec![], opts()).await.unwrap();
    }
    let mut raw = ::redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let prefix = "isopod:kv:4:main:";
    ::redis::cmd("DEL")
        .arg(format!("{prefix}k:b"))
        .query::<()>(&mut raw)
        .unwrap();
    let page =
        f.ns.list(ListOptions {
            limit: Some(2),
            ..ListOptions::default()
        })
        .await
        .unwrap();
    let names: Vec<_> = page.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    assert!(page.list_complete);
    let indexed: Vec<String> = ::redis::cmd("ZRANGE")
        .arg(format!("{prefix}i"))
        .arg(0)
        .arg(-1)
        .query(&mut raw)
        .unwrap();
    assert_eq!(indexed, ["a", "c"]);
}

/// Many writes at once (batched into few transactions by the SQLite
/// writer, pipelined on one connection by Redis) each resolve once stored.
async fn concurrent_writes_all_land(f: &Fixture) {
    let writes: Vec<_> = (0..300)
        .map(|i| {
            let ns = f.ns.clone();
            tokio::spawn(async move {
                let key = format!("c{i:03}");
                ns.put(&key, key.clone().into_bytes(), PutOptions::default())
                    .await
            })
        })
        .collect();
    for write in writes {
        write.await.unwrap().unwrap();
    }
    let listed = f.ns.list(ListOptions::default()).await.unwrap();
    assert_eq!(listed.keys.len(), 300);
    for i in [0, 150, 299] {
        let key = format!("c{i:03}");
        assert_eq!(f.ns.get(&key).await.unwrap().unwrap().value, key.as_bytes());
    }
}
