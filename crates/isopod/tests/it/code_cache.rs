//! The code cache of a version served from source (issue 20): once its first
//! request has run, the version's cache is made again from what ran, and the
//! admin API and the pool's statistics say whether V8 took it.

use serde_json::json;

use crate::support::{admin_server_in, fresh_dir, manifest_json, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_served_from_source_caches_what_its_first_request_compiled() {
    let dir = fresh_dir("code-cache");
    let isopod = admin_server_in(&dir, "");
    // Functions V8 compiles lazily, on the request that calls them.
    let mut source: String = (0..300)
        .map(|i| format!("function f{i}(x) {{ return x * {i} + 1; }}\n"))
        .collect();
    let calls: Vec<String> = (0..300).map(|i| format!("f{i}(x)")).collect();
    source.push_str(&format!(
        "function all(x) {{ return {}; }}\n\
         export default {{ fetch() {{ return new Response(String(all(1))); }} }};",
        calls.join(" + ")
    ));
    let (status, deployed) = isopod
        .admin(
            "PUT",
            "/apps/lazy",
            Some(ADMIN_TOKEN),
            Some((
                "application/json",
                manifest_json(&source, json!({ "snapshot": "off" })),
            )),
        )
        .await;
    assert_eq!(status, 201, "{deployed}");
    let compiled = deployed["code_cache"]["bytes"].as_u64().unwrap_or(0);
    assert!(
        compiled > 0,
        "the deploy's compile made no cache: {deployed}"
    );
    assert_eq!(deployed["code_cache"]["after_execution"], false);

    let (status, _, body) = isopod.get_host("lazy.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "45150"));
    let shown = isopod
        .await_admin("/apps/lazy", "the cache made after execution", |app| {
            app["code_cache"]["after_execution"] == true
        })
        .await;
    let after = shown["code_cache"]["bytes"].as_u64().unwrap();
    assert!(
        after > compiled + 300 * 20,
        "the cache made after execution ({after} bytes) holds no more than the compile's ({compiled}): {shown}"
    );
    assert_eq!(shown["code_cache"]["rejections"], 0, "{shown}");
    let (_, pool) = isopod
        .admin("GET", "/admin/pool", Some(ADMIN_TOKEN), None)
        .await;
    assert!(
        pool["code_caches_made_after_execution"].as_u64().unwrap() >= 1,
        "{pool}"
    );
    assert!(pool["code_cache_offers"].as_u64().unwrap() >= 1, "{pool}");
    assert_eq!(pool["code_cache_rejections"], 0, "{pool}");
}
