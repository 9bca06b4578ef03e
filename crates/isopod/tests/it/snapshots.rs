//! Version snapshots end to end (issue 20): a deployed version gets one and
//! its instances start from it, the registry keeps it across a restart, a
//! refused one leaves the version served from source, and an instance from
//! a snapshot is limited and killed like any other.

use serde_json::{json, Value};

use crate::support::{admin_server_in, fresh_dir, manifest_json, Isopod, ADMIN_TOKEN};

const TOKEN: Option<&str> = Some(ADMIN_TOKEN);

async fn deploy(isopod: &Isopod, app: &str, source: &str, extra: Value) -> Value {
    let (status, body) = isopod
        .admin(
            "PUT",
            &format!("/apps/{app}"),
            TOKEN,
            Some(("application/json", manifest_json(source, extra))),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    body
}

async fn pool(isopod: &Isopod) -> Value {
    isopod.admin("GET", "/admin/pool", TOKEN, None).await.1
}

/// Top-level work that makes a snapshot pay: tens of milliseconds of it
/// (a snapshot is only kept when loading the bundle takes longer than
/// restoring one), leaving little heap behind.
const SLOW_START: &str =
    "let warmed = 0; for (let i = 0; i < 3e7; i++) warmed = (warmed + i * 7) % 1000003;";

/// A table built once, after a slow start.
const TABLE_APP: &str =
    "let warmed = 0; for (let i = 0; i < 3e7; i++) warmed = (warmed + i * 7) % 1000003;\
     const squares = new Map(Array.from({ length: 500 }, (_, i) => [i, i * i]));\
     let served = 0;\
     export default { fetch(request) {\
       const n = Number(new URL(request.url).searchParams.get('n') ?? 7);\
       return Response.json({ square: squares.get(n), served: ++served });\
     } };";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_starts_from_its_snapshot_and_keeps_it_across_a_restart() {
    let dir = fresh_dir("snapshots");
    let mut isopod = admin_server_in(&dir, "");
    let deployed = deploy(&isopod, "table", TABLE_APP, json!({})).await;
    assert_eq!(deployed["snapshot"]["state"], "made", "{deployed}");
    assert!(deployed["snapshot"]["bytes"].as_u64().unwrap() > 1_000_000);

    let (status, _, body) = isopod.get_host("table.localhost", "/?n=12").await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["square"], 144);
    // The deploy left an instance warm, made from the snapshot.
    let stats = pool(&isopod).await;
    assert!(stats["snapshot_starts"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["misses"], 0, "{stats}");

    // After a restart the version is served at once, from source, and gets
    // its snapshot back from the registry rather than making it again.
    isopod.signal("TERM");
    assert!(isopod.wait_for_exit().success());
    let isopod = admin_server_in(&dir, "");
    let (status, _, body) = isopod.get_host("table.localhost", "/?n=3").await;
    assert_eq!(status, 200, "{body}");
    isopod.wait_for_log("the version's snapshot, from the registry", |r| {
        r["message"] == "the version's snapshot is ready" && r["app"] == "table"
    });
    let (_, shown) = isopod.admin("GET", "/apps/table", TOKEN, None).await;
    assert_eq!(shown["snapshot"]["state"], "made", "{shown}");
    assert!(
        !isopod
            .logs()
            .iter()
            .any(|r| r["message"] == "made the version's snapshot"),
        "the snapshot was made again after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_snapshot_is_refused_is_served_from_source() {
    let dir = fresh_dir("snapshot-refused");
    let isopod = admin_server_in(&dir, "");
    let deployed = deploy(
        &isopod,
        "clock",
        &format!(
            "{SLOW_START} const started = Date.now();\
             export default {{ fetch() {{ return new Response(typeof started); }} }};"
        ),
        json!({}),
    )
    .await;
    assert_eq!(deployed["snapshot"]["state"], "none", "{deployed}");
    assert!(
        deployed["snapshot"]["why"]
            .as_str()
            .unwrap()
            .contains("the clock"),
        "{deployed}"
    );
    let (status, _, body) = isopod.get_host("clock.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "number"));

    // Switched off by the app: no snapshot, and it says so.
    let deployed = deploy(&isopod, "plain", TABLE_APP, json!({ "snapshot": "off" })).await;
    assert_eq!(
        deployed["snapshot"]["why"], "snapshots are off",
        "{deployed}"
    );
    let (status, _, _) = isopod.get_host("plain.localhost", "/").await;
    assert_eq!(status, 200);

    // A bundle that loads faster than any snapshot restores gets none.
    let deployed = deploy(
        &isopod,
        "tiny",
        "export default { fetch() { return new Response('tiny'); } };",
        json!({}),
    )
    .await;
    assert!(
        deployed["snapshot"]["why"]
            .as_str()
            .unwrap()
            .contains("quicker than starting from a snapshot"),
        "{deployed}"
    );
    assert_eq!(pool(&isopod).await["snapshot_starts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_from_a_snapshot_is_limited_and_killed_like_any_other() {
    let dir = fresh_dir("snapshot-limits");
    let isopod = admin_server_in(&dir, "");
    let deployed = deploy(
        &isopod,
        "spin",
        &format!(
            "{SLOW_START} const table = Array.from({{ length: 100 }}, (_, i) => i);\
             export default {{ fetch(request) {{\
               if (new URL(request.url).pathname === '/spin') {{ for (;;) {{}} }}\
               return new Response(String(table.length));\
             }} }};"
        ),
        json!({ "limits": { "cpu_ms": 50 } }),
    )
    .await;
    assert_eq!(deployed["snapshot"]["state"], "made", "{deployed}");
    let (status, _, body) = isopod.get_host("spin.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "100"));
    assert!(pool(&isopod).await["snapshot_starts"].as_u64().unwrap() >= 1);

    let (status, _, body) = isopod.get_host("spin.localhost", "/spin").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("CPU time limit"), "{body}");
    let event = isopod.wait_for_log("the CPU kill", |r| {
        r["target"] == "isopod::kill" && r["app"] == "spin" && r["reason"] == "cpu"
    });
    assert!(event["cpu_ms"].as_f64().unwrap() >= 50.0, "{event}");
    // The next instance (from the snapshot again) serves: a miss, whose
    // first response the pool times from the request's arrival, with no
    // load (the snapshot had run the top-level code).
    let (status, _, body) = isopod.get_host("spin.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "100"));
    let stats = pool(&isopod).await;
    assert!(
        stats["first_response_p50_ms"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    assert_eq!(
        stats["first_response_load_p50_ms"].as_f64(),
        Some(0.0),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_one_bundle_share_one_snapshot_in_memory() {
    let dir = fresh_dir("snapshot-shared");
    let isopod = admin_server_in(&dir, "warm_on_deploy = false\n");
    let first = deploy(&isopod, "table-0", TABLE_APP, json!({})).await;
    assert_eq!(first["snapshot"]["state"], "made", "{first}");
    let bytes = first["snapshot"]["bytes"].as_u64().unwrap();
    for i in 1..4 {
        let deployed = deploy(&isopod, &format!("table-{i}"), TABLE_APP, json!({})).await;
        assert_eq!(deployed["snapshot"]["bytes"], bytes, "{deployed}");
    }
    let stats = pool(&isopod).await;
    assert_eq!(stats["snapshots_held"], 1, "{stats}");
    assert_eq!(stats["snapshot_bytes_held"], bytes, "{stats}");
    for i in 0..4 {
        let (status, _, body) = isopod
            .get_host(&format!("table-{i}.localhost"), "/?n=5")
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Another app's variables are another snapshot.
    deploy(
        &isopod,
        "table-vars",
        TABLE_APP,
        json!({ "vars": { "REGION": "eu" } }),
    )
    .await;
    assert_eq!(pool(&isopod).await["snapshots_held"], 2);
}
