//! D1 against real SQLite files.

use std::time::{Duration, Instant};

use super::*;
use crate::kv::tests::TempDir;

fn open(dir: &TempDir) -> D1Database {
    open_with(dir, D1Options::default())
}

fn open_with(dir: &TempDir, options: D1Options) -> D1Database {
    D1Database::open("test", &dir.path().join("test.sqlite3"), options).unwrap()
}

async fn setup(db: &D1Database) {
    db.exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, age INTEGER);")
        .await
        .unwrap();
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn message(e: D1Error) -> String {
    e.to_string()
}

#[tokio::test]
async fn prepare_bind_all_first_run_raw() {
    let dir = TempDir::new("d1-basic");
    let db = open(&dir);
    setup(&db).await;
    let insert = db.prepare("INSERT INTO users (name, age) VALUES (?, ?)");
    let run = insert
        .bind([text("ada"), Value::Integer(36)])
        .run()
        .await
        .unwrap();
    assert!(run.success);
    assert_eq!(run.meta.changes, 1);
    assert_eq!(run.meta.last_row_id, 1);
    assert_eq!(run.meta.rows_written, 1);
    assert!(run.meta.changed_db);
    assert_eq!(run.meta.served_by, "isopod");
    assert!(run.meta.size_after > 0);
    insert.bind([text("bob"), Value::Null]).run().await.unwrap();
    // ?NNN binds by position.
    db.prepare("INSERT INTO users (age, name) VALUES (?2, ?1)")
        .bind([text("cy"), Value::Integer(7)])
        .run()
        .await
        .unwrap();

    let all = db
        .prepare("SELECT id, name, age FROM users ORDER BY id")
        .all()
        .await
        .unwrap();
    assert!(all.success);
    assert_eq!(all.results.len(), 3);
    let first = &all.results[0];
    assert_eq!(first.columns(), ["id", "name", "age"]);
    assert_eq!(
        first.iter().collect::<Vec<_>>(),
        [
            ("id", &Value::Integer(1)),
            ("name", &text("ada")),
            ("age", &Value::Integer(36))
        ]
    );
    assert_eq!(all.results[2].get("age"), Some(&Value::Integer(7)));
    assert_eq!(all.meta.changes, 0);
    assert!(!all.meta.changed_db);
    assert_eq!(all.meta.rows_read, 3);
    assert_eq!(all.meta.rows_written, 0);
    assert!(all.meta.duration >= 0.0);

    let by_name = db.prepare("SELECT * FROM users WHERE name = ?");
    let row = by_name.bind([text("bob")]).first().await.unwrap().unwrap();
    assert_eq!(row.get("age"), Some(&Value::Null));
    assert_eq!(
        by_name
            .bind([text("ada")])
            .first_column("age")
            .await
            .unwrap(),
        Some(Value::Integer(36))
    );
    assert_eq!(by_name.bind([text("nobody")]).first().await.unwrap(), None);
    assert_eq!(
        by_name
            .bind([text("nobody")])
            .first_column("nope")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        message(
            by_name
                .bind([text("ada")])
                .first_column("nope")
                .await
                .unwrap_err()
        ),
        "D1_COLUMN_NOTFOUND: Column not found (nope)"
    );

    let raw = db
        .prepare("SELECT name, age FROM users WHERE id <= 2 ORDER BY id")
        .raw(true)
        .await
        .unwrap();
    assert_eq!(
        raw,
        [
            vec![text("name"), text("age")],
            vec![text("ada"), Value::Integer(36)],
            vec![text("bob"), Value::Null],
        ]
    );
    let raw = db
        .prepare("SELECT name FROM users WHERE id = 1")
        .raw(false)
        .await
        .unwrap();
    assert_eq!(raw, [vec![text("ada")]]);

    // Updates count their rows.
    let updated = db
        .prepare("UPDATE users SET age = age + 1 WHERE age IS NOT NULL")
        .run()
        .await
        .unwrap();
    assert_eq!(updated.meta.changes, 2);
    assert_eq!(updated.meta.rows_read, 3);
}

#[tokio::test]
async fn type_mapping() {
    let dir = TempDir::new("d1-types");
    let db = open(&dir);
    db.exec("CREATE TABLE t (v);").await.unwrap();
    let blob: Vec<u8> = (0..=255).collect();
    let values = [
        Value::Null,
        Value::Integer(i64::MAX),
        Value::Integer(i64::MIN),
        Value::Integer(9_007_199_254_740_993),
        Value::Real(1.5),
        Value::Real(-0.25),
        text("héllo"),
        text(""),
        Value::Blob(blob.clone()),
        Value::Blob(Vec::new()),
        Value::from(true),
        Value::from(false),
    ];
    let insert = db.prepare("INSERT INTO t (v) VALUES (?)");
    for value in &values {
        insert.bind([value.clone()]).run().await.unwrap();
    }
    let back = db
        .prepare("SELECT v, typeof(v) AS type FROM t ORDER BY rowid")
        .raw(false)
        .await
        .unwrap();
    let got: Vec<Value> = back.iter().map(|row| row[0].clone()).collect();
    let mut expected = values.to_vec();
    // Booleans went in as integers.
    expected[10] = Value::Integer(1);
    expected[11] = Value::Integer(0);
    assert_eq!(got, expected);
    let types: Vec<Value> = back.iter().map(|row| row[1].clone()).collect();
    assert_eq!(
        types,
        [
            "null", "integer", "integer", "integer", "real", "real", "text", "text", "blob",
            "blob", "integer", "integer"
        ]
        .map(text)
    );
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let dir = TempDir::new("d1-batch");
    let db = open(&dir);
    setup(&db).await;
    let insert = db.prepare("INSERT INTO users (name) VALUES (?)");
    let results = db
        .batch(&[
            insert.bind([text("a")]),
            insert.bind([text("b")]),
            db.prepare("SELECT count(*) AS n FROM users"),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].meta.last_row_id, 1);
    assert_eq!(results[1].meta.last_row_id, 2);
    assert_eq!(results[2].results[0].get("n"), Some(&Value::Integer(2)));

    // The second statement breaks the unique constraint: the first one's
    // row is not kept either.
    let e = db
        .batch(&[insert.bind([text("c")]), insert.bind([text("a")])])
        .await
        .unwrap_err();
    assert_eq!(
        message(e),
        "D1_ERROR: UNIQUE constraint failed: users.name: SQLITE_CONSTRAINT (extended: SQLITE_CONSTRAINT_UNIQUE)"
    );
    let count = db
        .prepare("SELECT count(*) AS n FROM users")
        .first_column("n")
        .await
        .unwrap();
    assert_eq!(count, Some(Value::Integer(2)));

    // Multiple statements in one query: the last one's rows come back.
    let multi = db
        .prepare("INSERT INTO users (name) VALUES ('m'); SELECT name FROM users WHERE name = ?")
        .bind([text("m")])
        .all()
        .await
        .unwrap();
    assert_eq!(multi.results[0].get("name"), Some(&text("m")));
    assert_eq!(multi.meta.changes, 1);
    let e = db
        .prepare("SELECT ?; SELECT 1")
        .bind([Value::Integer(1)])
        .all()
        .await
        .unwrap_err();
    assert_eq!(message(e), format!("D1_ERROR: {PARAMS_NOT_LAST}"));
}

#[tokio::test]
async fn errors_in_d1_shape() {
    let dir = TempDir::new("d1-errors");
    let db = open(&dir);
    setup(&db).await;
    let e = db.prepare("SELEC * FROM users").all().await.unwrap_err();
    assert_eq!(
        message(e),
        "D1_ERROR: near \"SELEC\": syntax error at offset 0: SQLITE_ERROR"
    );
    let e = db.prepare("SELECT * FROM nope").all().await.unwrap_err();
    assert_eq!(message(e), "D1_ERROR: no such table: nope: SQLITE_ERROR");
    let e = db
        .prepare("INSERT INTO users (name) VALUES (NULL)")
        .run()
        .await
        .unwrap_err();
    assert_eq!(
        message(e),
        "D1_ERROR: NOT NULL constraint failed: users.name: SQLITE_CONSTRAINT (extended: SQLITE_CONSTRAINT_NOTNULL)"
    );
    for bound in [vec![], vec![text("a"), text("b")]] {
        let e = db
            .prepare("SELECT * FROM users WHERE name = ?")
            .bind(bound)
            .all()
            .await
            .unwrap_err();
        assert_eq!(
            message(e),
            "D1_ERROR: Wrong number of parameter bindings for SQL query."
        );
    }
    let e = db
        .prepare("SELECT 1")
        .bind([Value::Integer(1)])
        .all()
        .await
        .unwrap_err();
    assert_eq!(
        message(e),
        "D1_ERROR: Wrong number of parameter bindings for SQL query."
    );
    for empty in ["", "  ", "-- just a comment"] {
        let e = db.prepare(empty).all().await.unwrap_err();
        assert_eq!(message(e), "D1_ERROR: No SQL statements detected.");
    }
    // D1's limit of 100 bound parameters.
    let many = vec!["?"; 101].join(",");
    let e = db
        .prepare(format!("SELECT {many}"))
        .bind(vec![Value::Integer(1); 101])
        .all()
        .await
        .unwrap_err();
    assert!(message(e).starts_with("D1_ERROR: too many SQL variables"));
}

#[tokio::test]
async fn exec_runs_lines_in_one_transaction() {
    let dir = TempDir::new("d1-exec");
    let db = open(&dir);
    let result = db
        .exec(
            "CREATE TABLE a (x);\n\nINSERT INTO a VALUES (1); INSERT INTO a VALUES (2);\n-- note\nINSERT INTO a VALUES (3);\n",
        )
        .await
        .unwrap();
    assert_eq!(result.count, 3);
    assert!(result.duration >= 0.0);
    let count = db
        .prepare("SELECT count(*) AS n FROM a")
        .first_column("n")
        .await
        .unwrap();
    assert_eq!(count, Some(Value::Integer(3)));

    let e = db
        .exec("INSERT INTO a VALUES (4);\nINSERTZ INTO a VALUES (5);")
        .await
        .unwrap_err();
    assert_eq!(
        message(e),
        "D1_EXEC_ERROR: Error in line 2: INSERTZ INTO a VALUES (5);: near \"INSERTZ\": syntax error at offset 0: SQLITE_ERROR"
    );
    // Line 1 ran, then was rolled back with the rest.
    let count = db
        .prepare("SELECT count(*) AS n FROM a")
        .first_column("n")
        .await
        .unwrap();
    assert_eq!(count, Some(Value::Integer(3)));
    // A statement across lines fails, as on D1.
    let e = db.exec("CREATE TABLE b (\n  x\n);").await.unwrap_err();
    assert!(
        message(e)
            .starts_with("D1_EXEC_ERROR: Error in line 1: CREATE TABLE b (: incomplete input"),
        "{}",
        "exec across lines"
    );
}

#[tokio::test]
async fn runaway_query_is_interrupted() {
    let dir = TempDir::new("d1-time");
    let limit = Duration::from_millis(200);
    let db = open_with(
        &dir,
        D1Options {
            time_limit: limit,
            ..D1Options::default()
        },
    );
    let started = Instant::now();
    let e = db
        .prepare(
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r",
        )
        .all()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        message(e),
        "D1_ERROR: Query exceeded the time limit of 200 ms: SQLITE_INTERRUPT"
    );
    assert!(took >= limit && took < limit * 10, "took {took:?}");
    // The database goes on serving.
    let one = db
        .prepare("SELECT 1 AS one")
        .first_column("one")
        .await
        .unwrap();
    assert_eq!(one, Some(Value::Integer(1)));
}

#[tokio::test]
async fn results_are_capped() {
    let dir = TempDir::new("d1-cap");
    let db = open_with(
        &dir,
        D1Options {
            max_result_bytes: 10_000,
            ..D1Options::default()
        },
    );
    db.exec("CREATE TABLE t (v TEXT);").await.unwrap();
    db.prepare(
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 100) INSERT INTO t SELECT printf('%0100d', i) FROM r",
    )
    .run()
    .await
    .unwrap();
    // 100 rows of 108 weighed bytes: over the cap.
    let e = db.prepare("SELECT v FROM t").all().await.unwrap_err();
    assert_eq!(
        message(e),
        "D1_ERROR: Query result exceeded the limit of 10000 bytes"
    );
    // Under the cap it is fine, and `run` keeps no rows at all.
    assert_eq!(
        db.prepare("SELECT v FROM t LIMIT 50")
            .all()
            .await
            .unwrap()
            .results
            .len(),
        50
    );
    db.prepare("SELECT v FROM t").run().await.unwrap();
}

#[tokio::test]
async fn escapes_are_refused() {
    let dir = TempDir::new("d1-guard");
    let db = open(&dir);
    setup(&db).await;
    let outside = dir.path().join("outside.sqlite3");
    let refused = [
        format!("ATTACH DATABASE '{}' AS other", outside.display()),
        "DETACH DATABASE other".to_owned(),
        "PRAGMA journal_mode = DELETE".to_owned(),
        "PRAGMA writable_schema = 1".to_owned(),
        "PRAGMA page_size = 1024".to_owned(),
        "PRAGMA user_version = 7".to_owned(),
        "PRAGMA journal_mode".to_owned(),
        "BEGIN".to_owned(),
        "COMMIT".to_owned(),
        "SAVEPOINT s".to_owned(),
        "CREATE TEMP TABLE t (x)".to_owned(),
    ];
    for sql in &refused {
        let e = db.prepare(sql.as_str()).run().await.unwrap_err();
        assert_eq!(message(e), "D1_ERROR: not authorized: SQLITE_AUTH", "{sql}");
    }
    let e = db
        .prepare("SELECT load_extension('/tmp/evil')")
        .all()
        .await
        .unwrap_err();
    assert_eq!(
        message(e),
        "D1_ERROR: not authorized to use function: load_extension at offset 7: SQLITE_ERROR"
    );
    let e = db
        .prepare(format!("VACUUM INTO '{}'", outside.display()))
        .run()
        .await
        .unwrap_err();
    assert_eq!(
        message(e),
        "D1_ERROR: cannot VACUUM from within a transaction: SQLITE_ERROR"
    );
    let e = db
        .exec(&format!("VACUUM INTO '{}'", outside.display()))
        .await
        .unwrap_err();
    assert!(message(e).starts_with("D1_EXEC_ERROR: Error in line 1: "));
    assert!(!outside.exists());

    // What D1 allows: schema reads and its switches.
    for sql in [
        "PRAGMA table_list",
        "PRAGMA table_info(users)",
        "PRAGMA foreign_keys",
        "PRAGMA foreign_keys = ON",
        "PRAGMA defer_foreign_keys = true",
        "PRAGMA index_list('users')",
        "PRAGMA foreign_key_check",
        "PRAGMA quick_check",
        "SELECT name FROM sqlite_master",
        "CREATE VIRTUAL TABLE docs USING fts5(body)",
    ] {
        db.prepare(sql)
            .all()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let info = db.prepare("PRAGMA table_info(users)").all().await.unwrap();
    assert_eq!(info.results.len(), 3);
}

#[tokio::test]
async fn durable_across_reopening() {
    let dir = TempDir::new("d1-durable");
    {
        let db = open(&dir);
        setup(&db).await;
        db.prepare("INSERT INTO users (name, age) VALUES (?, ?)")
            .bind([text("kept"), Value::Integer(1)])
            .run()
            .await
            .unwrap();
    }
    let db = open(&dir);
    let age = db
        .prepare("SELECT age FROM users WHERE name = 'kept'")
        .first_column("age")
        .await
        .unwrap();
    assert_eq!(age, Some(Value::Integer(1)));
}
