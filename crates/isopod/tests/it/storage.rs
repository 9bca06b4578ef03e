//! KV and D1 bindings end to end (issue 21): declared in the config file,
//! in an admin manifest and on `isopod run`'s command line; the same KV
//! test bundle answers the same on SQLite and on a real redis-server; D1's
//! calls, errors and refusals; apps sharing or not sharing storage; data
//! kept across a restart.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{fixture, free_port, fresh_dir, manifest_json, Isopod, ADMIN_TOKEN};

/// A `redis-server` of the test's own on a loopback port, stopped on drop;
/// `None` (saying so) when the binary is absent, except under CI, which
/// installs it.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start(dir: &Path) -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed (.ci/run installs it)"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let server = RedisServer::start_on(dir, free_port());
        let port = server.port;
        // Ready when it answers PING.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let mut answer = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut answer).is_ok()
                    && &answer == b"+PONG\r\n"
                {
                    return Some(server);
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::yield_now();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kv_suite() -> String {
    std::fs::read_to_string(fixture("kv_suite.js")).unwrap()
}

async fn run_suite(isopod: &Isopod, host: &str, run: &str) -> Value {
    let (status, _, body) = isopod.get_host(host, &format!("/?run={run}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// What the suite must answer, whatever the backend.
fn assert_kv_answers(out: &Value) {
    assert_eq!(out["put and get text"], "alpha", "{out}");
    assert_eq!(out["missing key"], Value::Null, "{out}");
    assert_eq!(out["json"], json!({ "x": [1, 2] }), "{out}");
    assert_eq!(
        out["arrayBuffer of typed array"],
        json!([1, 0, 2, 1]),
        "{out}"
    );
    assert_eq!(out["ArrayBuffer value"], json!([7, 8, 9]), "{out}");
    assert_eq!(out["stream in, stream out"], "streamed value", "{out}");
    assert_eq!(
        out["metadata"],
        json!({ "value": "v", "metadata": { "owner": "ada", "n": 3 } }),
        "{out}"
    );
    assert_eq!(out["no metadata"], Value::Null, "{out}");
    assert_eq!(
        out["bulk get"],
        json!([["a", "alpha"], ["missing", null]]),
        "{out}"
    );
    assert_eq!(out["expiration ttl"], "number", "{out}");
    assert_eq!(
        out["expiration too soon"],
        "Error: KV PUT failed: 400 Invalid expiration_ttl of 10. Expiration TTL must be at least 60.",
        "{out}"
    );
    assert_eq!(out["delete"], Value::Null, "{out}");
    assert_eq!(out["delete missing"], Value::Null, "{out}");
    assert_eq!(
        out["list in key order with metadata"],
        json!({ "names": ["l/a", "l/b", "l/c"], "metadata": ["l/a", "l/b", "l/c"], "complete": true, "cursor": false }),
        "{out}"
    );
    assert_eq!(
        out["pagination"],
        json!({ "pages": 3, "count": 25, "first": "p/00", "last": "p/24" }),
        "{out}"
    );
    // A cursor that is not this namespace's lists from the start (as on
    // miniflare): this namespace's keys only.
    assert_eq!(out["forged cursor"]["list_complete"], true, "{out}");
    assert!(
        out["forged cursor"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|key| key["name"].as_str().unwrap().starts_with("r1:")),
        "{out}"
    );
    assert_eq!(
        out["empty key"], "TypeError: Key name cannot be empty.",
        "{out}"
    );
    assert_eq!(
        out["dot key"], "TypeError: \".\" is not allowed as a key name.",
        "{out}"
    );
    assert_eq!(
        out["key too long"],
        "Error: KV GET failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512.",
        "{out}"
    );
    assert!(
        out["metadata too large"]
            .as_str()
            .unwrap()
            .contains("exceeds limit of 1024"),
        "{out}"
    );
    assert!(
        out["list limit too large"]
            .as_str()
            .unwrap()
            .starts_with("Error: KV GET failed: 400 Invalid key_count_limit"),
        "{out}"
    );
    // Stored as its string, as workerd converts it.
    assert_eq!(out["bad value type"], Value::Null, "{out}");
    assert!(
        out["unknown type"]
            .as_str()
            .unwrap()
            .starts_with("TypeError: Unknown response type"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_kv_bundle_answers_the_same_on_sqlite_and_on_redis() {
    let dir = fresh_dir("kv-backends");
    let redis = RedisServer::start(&dir);
    let mut config = String::new();
    if let Some(redis) = &redis {
        config.push_str(&format!(
            "redis_url = \"redis://127.0.0.1:{}\"\n",
            redis.port
        ));
    }
    config.push_str(
        "[[apps]]\nname = \"onsqlite\"\nbundle = \"kv.js\"\nkv = [{ binding = \"KV\", namespace = \"suite\" }]\n",
    );
    if redis.is_some() {
        config.push_str(
            "[[apps]]\nname = \"onredis\"\nbundle = \"kv.js\"\nkv = [{ binding = \"KV\", namespace = \"suite\", backend = \"redis\" }]\n",
        );
    }
    let isopod = Isopod::serve_in(&dir, &config, &[("kv.js", &kv_suite())], &[]);
    let on_sqlite = run_suite(&isopod, "onsqlite.localhost", "r1").await;
    assert_kv_answers(&on_sqlite);
    if redis.is_some() {
        let on_redis = run_suite(&isopod, "onredis.localhost", "r1").await;
        assert_eq!(on_redis, on_sqlite, "the backends answer differently");
        // The two namespaces of one name are apart: one per backend.
        let (_, _, body) = isopod
            .get_host("onredis.localhost", "/put?key=only-redis&value=r")
            .await;
        assert_eq!(body, "ok");
        let (_, _, body) = isopod
            .get_host("onsqlite.localhost", "/get?key=only-redis")
            .await;
        assert_eq!(body, "null");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopping_fails_kv_calls_clearly_and_other_apps_keep_serving() {
    let dir = fresh_dir("kv-redis-down");
    let Some(redis) = RedisServer::start(&dir) else {
        return;
    };
    let config = format!(
        "redis_url = \"redis://127.0.0.1:{}\"\n\
         [[apps]]\nname = \"cache\"\nbundle = \"kv.js\"\nkv = [{{ binding = \"KV\", backend = \"redis\" }}]\n\
         [[apps]]\nname = \"plain\"\nbundle = \"plain.js\"\n",
        redis.port
    );
    let plain = "export default { fetch() { return new Response('plain'); } };";
    let isopod = Isopod::serve_in(
        &dir,
        &config,
        &[("kv.js", &kv_suite()), ("plain.js", plain)],
        &[],
    );
    let (_, _, body) = isopod
        .get_host("cache.localhost", "/put?key=k&value=v")
        .await;
    assert_eq!(body, "ok");
    let port = redis.port;
    drop(redis);
    let started = Instant::now();
    let (status, _, body) = isopod.get_host("cache.localhost", "/get?key=k").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the failing call took {:?}",
        started.elapsed()
    );
    let (status, _, body) = isopod.get_host("plain.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "plain"));
    // Back on the same port: calls succeed again (the value is gone with
    // the server's memory).
    let _again = RedisServer::start_on(&dir, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = isopod
            .get_host("cache.localhost", "/put?key=k&value=w")
            .await;
        if status == 200 && body == "ok" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "KV did not recover: {status} {body}"
        );
        tokio::task::yield_now().await;
    }
    let (_, _, body) = isopod.get_host("cache.localhost", "/get?key=k").await;
    assert_eq!(body, "w");
}

impl RedisServer {
    /// Another server on `port` (after one was stopped there).
    fn start_on(dir: &Path, port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        RedisServer { child, port }
    }
}

const D1_APP: &str = r#"
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const db = env.DB;
    const out = {};
    const attempt = async (name, fn) => {
      try { out[name] = await fn(); } catch (e) { out[name] = `${e.name}: ${e.message}`; }
    };
    if (url.pathname === "/setup") {
      await db.exec("CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT UNIQUE, age REAL, photo BLOB)");
      const run = await db.prepare("INSERT INTO people (name, age, photo) VALUES (?1, ?2, ?3)")
        .bind("ada", 36.5, new Uint8Array([1, 2, 255])).run();
      return Response.json({ success: run.success, changes: run.meta.changes, last: run.meta.last_row_id });
    }
    if (url.pathname === "/count") {
      return Response.json(await db.prepare("SELECT count(*) AS n FROM people").first("n"));
    }
    await attempt("first row", () => db.prepare("SELECT id, name, age FROM people WHERE name = ?").bind("ada").first());
    await attempt("first column", () => db.prepare("SELECT name FROM people").first("name"));
    await attempt("first none", () => db.prepare("SELECT name FROM people WHERE id = -1").first());
    await attempt("missing column", () => db.prepare("SELECT name FROM people").first("nope"));
    await attempt("all", async () => {
      const all = await db.prepare("SELECT name, age FROM people ORDER BY id").all();
      return { success: all.success, results: all.results, served_by: all.meta.served_by, rows_read: all.meta.rows_read >= 1 };
    });
    await attempt("raw", () => db.prepare("SELECT id, name FROM people").raw());
    await attempt("raw with names", () => db.prepare("SELECT id, name FROM people").raw({ columnNames: true }));
    await attempt("blob", async () => [...new Uint8Array(await db.prepare("SELECT photo FROM people").first("photo"))]);
    await attempt("types", () => db.prepare("SELECT ? AS t, ? AS f, ? AS n, ? AS big, typeof(?) AS kind").bind(true, false, null, 2 ** 53 - 1, 1.5).first());
    await attempt("bad type", () => db.prepare("SELECT ?").bind({}).first());
    await attempt("bad sql", () => db.prepare("SELEC 1").all());
    await attempt("constraint", () => db.prepare("INSERT INTO people (name) VALUES ('ada')").run());
    await attempt("batch rolls back", async () => {
      try {
        await db.batch([
          db.prepare("INSERT INTO people (name) VALUES (?)").bind("bob"),
          db.prepare("INSERT INTO people (name) VALUES (?)").bind("ada"),
        ]);
        return "committed";
      } catch (e) {
        const bob = await db.prepare("SELECT count(*) AS n FROM people WHERE name = 'bob'").first("n");
        return { error: e.message.startsWith("D1_ERROR: UNIQUE constraint failed"), bob };
      }
    });
    await attempt("batch", async () => {
      const results = await db.batch([
        db.prepare("INSERT INTO people (name) VALUES (?)").bind("cyd"),
        db.prepare("SELECT name FROM people ORDER BY id"),
      ]);
      await db.prepare("DELETE FROM people WHERE name = 'cyd'").run();
      return [results[0].meta.changes, results[1].results.map((r) => r.name)];
    });
    await attempt("exec", () => db.exec("CREATE TABLE IF NOT EXISTS t (x);\nINSERT INTO t VALUES (1);\nDELETE FROM t;").then((r) => r.count));
    await attempt("attach", () => db.exec("ATTACH DATABASE '/tmp/other.sqlite3' AS other"));
    await attempt("load_extension", () => db.prepare("SELECT load_extension('/tmp/x.so')").all());
    await attempt("pragma write", () => db.prepare("PRAGMA journal_mode = DELETE").all());
    return Response.json(out);
  },
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_answers_as_d1_does_and_keeps_its_data_across_a_restart() {
    let dir = fresh_dir("d1");
    let config = "[[apps]]\nname = \"people\"\nbundle = \"d1.js\"\nd1 = [{ binding = \"DB\", database = \"people\" }]\n";
    let mut isopod = Isopod::serve_in(&dir, config, &[("d1.js", D1_APP)], &[]);
    let (status, _, body) = isopod.get_host("people.localhost", "/setup").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "success": true, "changes": 1, "last": 1 })
    );
    let (status, _, body) = isopod.get_host("people.localhost", "/").await;
    assert_eq!(status, 200, "{body}");
    let out: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        out["first row"],
        json!({ "id": 1, "name": "ada", "age": 36.5 }),
        "{out}"
    );
    assert_eq!(out["first column"], "ada", "{out}");
    assert_eq!(out["first none"], Value::Null, "{out}");
    assert_eq!(
        out["missing column"], "Error: D1_COLUMN_NOTFOUND: Column not found (nope)",
        "{out}"
    );
    assert_eq!(
        out["all"],
        json!({ "success": true, "results": [{ "name": "ada", "age": 36.5 }], "served_by": "isopod", "rows_read": true }),
        "{out}"
    );
    assert_eq!(out["raw"], json!([[1, "ada"]]), "{out}");
    assert_eq!(
        out["raw with names"],
        json!([["id", "name"], [1, "ada"]]),
        "{out}"
    );
    assert_eq!(out["blob"], json!([1, 2, 255]), "{out}");
    assert_eq!(
        out["types"],
        json!({ "t": 1, "f": 0, "n": null, "big": 9007199254740991u64, "kind": "real" }),
        "{out}"
    );
    assert_eq!(
        out["bad type"],
        "Error: D1_TYPE_ERROR: Type 'object' not supported for value '[object Object]'",
        "{out}"
    );
    assert!(
        out["bad sql"]
            .as_str()
            .unwrap()
            .starts_with("Error: D1_ERROR: near \"SELEC\": syntax error"),
        "{out}"
    );
    assert!(
        out["constraint"]
            .as_str()
            .unwrap()
            .starts_with("Error: D1_ERROR: UNIQUE constraint failed: people.name"),
        "{out}"
    );
    assert_eq!(
        out["batch rolls back"],
        json!({ "error": true, "bob": 0 }),
        "{out}"
    );
    assert_eq!(out["batch"], json!([1, ["ada", "cyd"]]), "{out}");
    assert_eq!(out["exec"], 3, "{out}");
    for refused in ["attach", "load_extension", "pragma write"] {
        assert!(
            out[refused].as_str().unwrap().starts_with("Error: D1_"),
            "{refused} was not refused: {out}"
        );
    }

    // The database outlives the process.
    isopod.signal("TERM");
    assert!(isopod.wait_for_exit().success());
    let isopod = Isopod::serve_in(&dir, config, &[("d1.js", D1_APP)], &[]);
    let (status, _, body) = isopod.get_host("people.localhost", "/count").await;
    assert_eq!((status, body.as_str()), (200, "1"));
}

/// A namespace belongs to the apps that name it: two apps naming one share
/// it, an app naming another sees nothing of it, whatever keys it asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_share_a_namespace_only_by_naming_it() {
    let dir = fresh_dir("kv-isolation");
    let isopod = crate::support::admin_server_in(&dir, "");
    for (app, namespace) in [
        ("writer", "shared"),
        ("reader", "shared"),
        ("other", "private"),
    ] {
        let (status, body) = isopod
            .admin(
                "PUT",
                &format!("/apps/{app}"),
                Some(ADMIN_TOKEN),
                Some((
                    "application/json",
                    manifest_json(
                        &kv_suite(),
                        json!({ "kv": [{ "binding": "KV", "namespace": namespace }] }),
                    ),
                )),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, _, body) = isopod
        .get_host("writer.localhost", "/put?key=secret&value=s3")
        .await;
    assert_eq!(body, "ok");
    let (_, _, body) = isopod.get_host("reader.localhost", "/get?key=secret").await;
    assert_eq!(body, "s3");
    for key in [
        "secret",
        "shared:secret",
        "../shared/secret",
        "shared/secret",
    ] {
        let (_, _, body) = isopod
            .get_host("other.localhost", &format!("/get?key={key}"))
            .await;
        assert_eq!(body, "null", "{key} reached another namespace");
    }
    // A binding without a data directory's storage, or a bad one, is
    // refused at deploy with the reason.
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/badname",
            Some(ADMIN_TOKEN),
            Some((
                "application/json",
                manifest_json(
                    &kv_suite(),
                    json!({ "kv": [{ "binding": "KV", "namespace": "../escape" }] }),
                ),
            )),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("KV binding 'KV'"),
        "{body}"
    );
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/clash",
            Some(ADMIN_TOKEN),
            Some((
                "application/json",
                manifest_json(
                    &kv_suite(),
                    json!({ "vars": { "KV": "x" }, "kv": [{ "binding": "KV" }] }),
                ),
            )),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("bound twice"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isopod_run_binds_kv_and_d1_in_a_temporary_directory_and_says_so() {
    let bundle = crate::support::temp_bundle(
        "run-bindings",
        "export default { async fetch(request, env) {\
           await env.CACHE.put('k', 'v');\
           const n = await env.DB.prepare('SELECT 41 + 1 AS n').first('n');\
           return new Response(await env.CACHE.get('k') + n);\
         } };",
    );
    let isopod = Isopod::start(&bundle, &["--kv", "CACHE", "--d1", "DB=main"]);
    let warning = isopod.wait_for_log("the temporary-storage warning", |r| {
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("temporary directory"))
    });
    assert!(warning["data_dir"].as_str().is_some(), "{warning}");
    let (status, _, body) = isopod.get("/").await;
    assert_eq!((status, body.as_str()), (200, "v42"));
}

/// Runs `bundle` once under miniflare (scripts/miniflare) with `bindings`
/// (`--kv KV`, ...) and returns its answer to `path`; `None` (saying so)
/// when miniflare is not installed, except under CI, which installs it.
fn miniflare_answer(bundle: &Path, path: &str, bindings: &[&str]) -> Option<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let runner = root.join("scripts/miniflare/run.mjs");
    if !root
        .join("scripts/miniflare/node_modules/miniflare")
        .is_dir()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "miniflare is not installed (.ci/run runs npm ci --prefix scripts/miniflare)"
        );
        eprintln!("SKIPPED: miniflare is not installed (npm ci --prefix scripts/miniflare)");
        return None;
    }
    let output = Command::new("node")
        .arg(runner)
        .arg(bundle)
        .arg(path)
        .args(bindings)
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "miniflare failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).expect("miniflare answered JSON"))
}

/// `value` with what depends on the clock or on the machine's speed
/// (expiration times, durations) replaced by its type.
fn timeless(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, field)| {
                    let kept = match (key.as_str(), field) {
                        ("expiration" | "duration", Value::Number(_)) => json!("number"),
                        _ => timeless(field),
                    };
                    (key.clone(), kept)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(timeless).collect()),
        other => other.clone(),
    }
}

/// Miniflare is the reference for the bindings' behaviour: the KV suite and
/// the D1 probe answer on isopod exactly as on miniflare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_d1_answer_as_miniflare_does() {
    let kv = fixture("kv_suite.js");
    let d1 = fixture("d1_probe.js");
    let Some(kv_reference) = miniflare_answer(&kv, "/?run=r1", &["--kv", "KV"]) else {
        return;
    };
    let d1_reference = miniflare_answer(&d1, "/", &["--d1", "DB"]).unwrap();
    let dir = fresh_dir("miniflare");
    let config = "[[apps]]\nname = \"kv\"\nbundle = \"kv.js\"\nkv = [{ binding = \"KV\" }]\n\
                  [[apps]]\nname = \"d1\"\nbundle = \"d1.js\"\nd1 = [{ binding = \"DB\" }]\n";
    let isopod = Isopod::serve_in(
        &dir,
        config,
        &[
            ("kv.js", &kv_suite()),
            ("d1.js", &std::fs::read_to_string(&d1).unwrap()),
        ],
        &[],
    );
    let on_isopod = run_suite(&isopod, "kv.localhost", "r1").await;
    assert_eq!(timeless(&on_isopod), timeless(&kv_reference));
    let (status, _, body) = isopod.get_host("d1.localhost", "/").await;
    assert_eq!(status, 200, "{body}");
    let on_isopod: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(timeless(&on_isopod), timeless(&d1_reference));
}

/// Operators reach an app's storage through its bindings: the admin API
/// and `isopod kv` / `isopod d1` read and write what the app sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_read_and_write_an_apps_storage_through_the_admin_api_and_cli() {
    let dir = fresh_dir("admin-storage");
    let isopod = crate::support::admin_server_in(&dir, "");
    let app = "export default { async fetch(request, env) {\
         const url = new URL(request.url);\
         if (url.pathname === '/note') { await env.KV.put('from/app', 'written by the app', { metadata: { by: 'app' } }); return new Response('ok'); }\
         if (url.pathname === '/count') { return new Response(String(await env.DB.prepare('SELECT count(*) AS n FROM notes').first('n'))); }\
         return new Response(String(await env.KV.get('from/admin')));\
       } };";
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/notes",
            Some(ADMIN_TOKEN),
            Some((
                "application/json",
                manifest_json(
                    app,
                    json!({ "kv": [{ "binding": "KV" }], "d1": [{ "binding": "DB", "database": "notes" }] }),
                ),
            )),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let url = format!("http://{}", isopod.admin.unwrap());
    let cli = |args: &[&str]| crate::support::admin_cli(&url, ADMIN_TOKEN, args);

    // KV: the operator writes, the app reads; the app writes, the operator
    // lists and reads (a key with a '/').
    let (ok, out, err) = cli(&["kv", "put", "notes", "KV", "from/admin", "hello from ops"]);
    assert!(ok, "{out} {err}");
    let (status, _, body) = isopod.get_host("notes.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "hello from ops"));
    let (_, _, body) = isopod.get_host("notes.localhost", "/note").await;
    assert_eq!(body, "ok");
    let (ok, out, err) = cli(&["kv", "list", "notes", "KV", "--prefix", "from/"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["from/admin", "from/app"]);
    let (status, shown) = isopod
        .admin(
            "GET",
            "/apps/notes/kv/KV/from%2Fapp",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["value"], "written by the app");
    assert_eq!(shown["metadata"], json!({ "by": "app" }));
    let (ok, out, _) = cli(&["kv", "get", "notes", "KV", "from/app"]);
    assert!(ok && out.trim() == "written by the app", "{out}");
    let (ok, _, err) = cli(&["kv", "delete", "notes", "KV", "from/admin"]);
    assert!(ok, "{err}");
    let (_, _, body) = isopod.get_host("notes.localhost", "/").await;
    assert_eq!(body, "null");
    // KV's limits hold here too, with its message.
    let (ok, _, err) = cli(&["kv", "put", "notes", "KV", "k", "v", "--ttl", "5"]);
    assert!(
        !ok && err.contains("Expiration TTL must be at least 60"),
        "{err}"
    );

    // D1: the operator creates and fills a table, the app counts it, and
    // the export replays as SQL.
    for sql in [
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
        "INSERT INTO notes (body) VALUES ('first'), ('second')",
    ] {
        let (ok, out, err) = cli(&["d1", "query", "notes", "DB", sql]);
        assert!(ok, "{sql}: {out} {err}");
    }
    let (ok, out, err) = cli(&[
        "d1",
        "query",
        "notes",
        "DB",
        "SELECT body FROM notes WHERE id = ?",
        "2",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().map(str::trim).collect::<Vec<_>>(),
        ["body", "second"]
    );
    let (_, _, body) = isopod.get_host("notes.localhost", "/count").await;
    assert_eq!(body, "2");
    let (ok, sql, err) = cli(&["d1", "export", "notes", "DB"]);
    assert!(ok, "{err}");
    assert!(sql.contains("CREATE TABLE notes"), "{sql}");
    assert!(sql.contains("'second'"), "{sql}");
    // By the database's own name, the same.
    let (ok, by_name, err) = cli(&["d1", "export", "notes"]);
    assert!(ok, "{err}");
    assert_eq!(by_name, sql);
    let (ok, _, err) = cli(&["d1", "query", "notes", "DB", "SELEC 1"]);
    assert!(!ok && err.contains("D1_ERROR: near \"SELEC\""), "{err}");

    // Another app's binding name reaches nothing: each call names the app.
    let (status, body) = isopod
        .admin("GET", "/apps/notes/kv/NOPE", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = isopod
        .admin(
            "POST",
            "/apps/notes/d1/KV/query",
            Some(ADMIN_TOKEN),
            Some(("application/json", "{\"sql\":\"SELECT 1\"}".into())),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// A storage call's wait is not the request's CPU time: a D1 query that
/// keeps SQLite busy far past the app's 50 ms CPU limit neither kills the
/// request nor shows in its `cpu_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_storage_is_not_charged_as_cpu_time() {
    let dir = fresh_dir("storage-cpu");
    let app = "export default { async fetch(request, env) {\
         const n = await env.DB.prepare(\
           'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) AS n FROM c'\
         ).first('n');\
         return new Response(String(n));\
       } };";
    let config = "[[apps]]\nname = \"slow\"\nbundle = \"slow.js\"\nd1 = [{ binding = \"DB\" }]\nlimits = { cpu_ms = 50 }\n";
    let isopod = Isopod::serve_in(&dir, config, &[("slow.js", app)], &[]);
    let (status, headers, body) = isopod.get_host("slow.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "3000000"));
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    let record = isopod.wait_for_log("the access record", |r| {
        r["target"] == "isopod::access" && r["request_id"] == id.as_str()
    });
    let cpu = record["cpu_ms"].as_f64().unwrap();
    let took = record["duration_ms"].as_f64().unwrap();
    assert!(cpu < 50.0, "the wait was charged: {record}");
    assert!(
        took > cpu * 2.0,
        "the query did not take the time: {record}"
    );
}

/// The server's storage as a whole: listed whether or not an app names it,
/// kept when its app goes, deleted only once no app binds it, and backed
/// up online into copies that hold the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_outlives_its_app_until_dropped_and_backs_up_online() {
    let dir = fresh_dir("storage-admin");
    let isopod = crate::support::admin_server_in(&dir, "");
    let app = "export default { async fetch(request, env) {\
         await env.KV.put('k', 'kept');\
         await env.DB.exec('CREATE TABLE IF NOT EXISTS t (x);\\nINSERT INTO t VALUES (7);');\
         return new Response('ok');\
       } };";
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/owner",
            Some(ADMIN_TOKEN),
            Some((
                "application/json",
                manifest_json(
                    app,
                    json!({ "kv": [{ "binding": "KV", "namespace": "keep" }], "d1": [{ "binding": "DB", "database": "db1" }] }),
                ),
            )),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, _, body) = isopod.get_host("owner.localhost", "/").await;
    assert_eq!(body, "ok");
    let url = format!("http://{}", isopod.admin.unwrap());
    let cli = |args: &[&str]| crate::support::admin_cli(&url, ADMIN_TOKEN, args);

    let (ok, out, err) = cli(&["storage", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("keep") && out.contains("db1"), "{out}");
    // Bound: not dropped.
    let (ok, _, err) = cli(&["storage", "drop", "kv", "sqlite", "keep"]);
    assert!(!ok && err.contains("app 'owner' binds it"), "{err}");

    // An online backup holds the data.
    let backup = dir.join("backup");
    let (ok, out, err) = cli(&["storage", "backup", backup.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("db1.sqlite3"), "{out}");
    let copy =
        isopod_store::Storage::open(&backup, isopod_store::StorageOptions::default()).unwrap();
    let x = copy
        .d1_database("db1")
        .unwrap()
        .prepare("SELECT x FROM t")
        .first_column("x")
        .await
        .unwrap();
    assert_eq!(x, Some(isopod_store::d1::Value::Integer(7)));
    let kept = copy
        .kv_namespace("keep", isopod_store::kv::KvBackend::Sqlite)
        .unwrap()
        .get("k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.value, b"kept");

    // The app goes; its storage stays until dropped.
    let (status, _) = isopod
        .admin("DELETE", "/apps/owner", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 200);
    let (_, listed) = isopod
        .admin("GET", "/storage", Some(ADMIN_TOKEN), None)
        .await;
    assert!(listed["kv"].to_string().contains("keep"), "{listed}");
    let (ok, out, err) = cli(&["storage", "drop", "kv", "sqlite", "keep"]);
    assert!(ok, "{out} {err}");
    let (_, listed) = isopod
        .admin("GET", "/storage", Some(ADMIN_TOKEN), None)
        .await;
    assert!(!listed["kv"].to_string().contains("keep"), "{listed}");
}
