//! What a KV read costs below the binding: a bare SQLite point read (a
//! cached prepared statement on a table of the same shape) next to
//! `KvNamespace::get` and `put` on the SQLite backend, awaited one after
//! another on a current-thread runtime as an isolate's thread awaits them.
//! Prints one JSON object of microseconds per call (the bench reads it).
//!
//! Usage: `cargo run --release -p isopod-store --example kv_call_cost [CALLS]`

use std::time::Instant;

use isopod_store::kv::{KvBackend, PutOptions};
use isopod_store::{Storage, StorageOptions};

fn main() {
    let calls: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let dir = std::env::temp_dir().join(format!("isopod-kv-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");

    // Bare SQLite: WAL, one row, a cached prepared statement.
    let bare = rusqlite::Connection::open(dir.join("bare.sqlite3")).expect("bare file");
    bare.execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB);\
         INSERT INTO kv VALUES ('k', x'76616c7565');",
    )
    .expect("bare schema");
    let started = Instant::now();
    for _ in 0..calls {
        let mut statement = bare
            .prepare_cached("SELECT value FROM kv WHERE key = ?1")
            .expect("statement");
        let value: Vec<u8> = statement
            .query_row(["k"], |row| row.get(0))
            .expect("the row");
        std::hint::black_box(value);
    }
    let bare_read = started.elapsed().as_secs_f64() * 1e6 / f64::from(calls);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (store_read, store_write) = runtime.block_on(async {
        let storage = Storage::open(&dir, StorageOptions::default()).expect("storage");
        let namespace = storage
            .kv_namespace("cost", KvBackend::Sqlite)
            .expect("namespace");
        namespace
            .put("k", b"value".to_vec(), PutOptions::default())
            .await
            .expect("put");
        let started = Instant::now();
        for _ in 0..calls {
            std::hint::black_box(namespace.get("k").await.expect("get"));
        }
        let read = started.elapsed().as_secs_f64() * 1e6 / f64::from(calls);
        let writes = (calls / 10).max(1);
        let started = Instant::now();
        for i in 0..writes {
            namespace
                .put(&format!("w{i}"), b"value".to_vec(), PutOptions::default())
                .await
                .expect("put");
        }
        let write = started.elapsed().as_secs_f64() * 1e6 / f64::from(writes);
        (read, write)
    });
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{{\"calls\": {calls}, \"bare_sqlite_read_us\": {bare_read:.3}, \"store_get_us\": {store_read:.3}, \"store_put_us\": {store_write:.3}}}"
    );
}
