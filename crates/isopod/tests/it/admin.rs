//! The admin API: authentication, deploys, hot-swap, removal and the pool's
//! statistics.

use crate::support::{assert_admin_refused, Isopod, ADMIN_TOKEN};

fn server() -> Isopod {
    let config =
        format!("threads = 2\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n");
    Isopod::serve(&config, &[])
}

fn js(source: &str) -> Option<(&'static str, String)> {
    Some(("application/javascript", source.to_string()))
}

#[tokio::test]
async fn every_call_but_healthz_needs_the_token() {
    let isopod = server();
    assert_eq!(isopod.admin("GET", "/healthz", None, None).await.0, 200);
    assert_eq!(isopod.admin("GET", "/apps", None, None).await.0, 401);
    assert_eq!(
        isopod
            .admin("GET", "/apps", Some("test-token-wrong-value"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        isopod
            .admin("GET", "/admin/pool", Some("short"), None)
            .await
            .0,
        401
    );
    let put = isopod
        .admin(
            "PUT",
            "/apps/x",
            None,
            js("export default { fetch() { return new Response('x'); } };"),
        )
        .await;
    assert_eq!(put.0, 401);
    assert_eq!(
        isopod
            .admin("GET", "/apps", Some(ADMIN_TOKEN), None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn deploy_list_swap_and_remove() {
    let isopod = server();
    let token = Some(ADMIN_TOKEN);
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/shop",
            token,
            js("export default { fetch() { return new Response('v1'); } };"),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let v1 = body["version"].as_str().unwrap().to_string();
    assert_eq!(isopod.get_host("shop.localhost", "/").await.2, "v1");

    let manifest = serde_json::json!({
        "bundle": "export default { fetch(r, env) { return new Response('v2 ' + env.GREETING); } };",
        "routes": [{ "host": "shop.example.com" }],
        "vars": { "GREETING": "hello" },
        "mode": "pooled",
    });
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/shop",
            token,
            Some(("application/json", manifest.to_string())),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["version"].as_str().unwrap(), v1);
    assert_eq!(isopod.get_host("shop.example.com", "/").await.2, "v2 hello");

    let (_, listed) = isopod.admin("GET", "/apps", token, None).await;
    assert_eq!(listed["apps"][0]["name"], "shop");
    assert_eq!(listed["apps"][0]["routes"][0]["host"], "shop.example.com");
    assert_eq!(
        listed["apps"][0]["vars"],
        serde_json::json!(["GREETING"]),
        "values stay secret"
    );
    let (status, shown) = isopod.admin("GET", "/apps/shop", token, None).await;
    assert_eq!((status, shown["mode"].as_str()), (200, Some("pooled")));

    assert_eq!(
        isopod.admin("DELETE", "/apps/shop", token, None).await.0,
        200
    );
    assert_eq!(isopod.get_host("shop.example.com", "/").await.0, 404);
    assert_eq!(isopod.admin("GET", "/apps/shop", token, None).await.0, 404);
    assert_eq!(
        isopod.admin("DELETE", "/apps/shop", token, None).await.0,
        404
    );
}

/// A deploy can give an app a port of its own: opened on every worker
/// thread while the server runs, kept across hot-swaps, moved by a later
/// manifest, closed when the app is removed. isopod's own ports and another
/// app's are refused.
#[tokio::test]
async fn a_deploy_opens_moves_and_closes_an_apps_own_port() {
    let isopod = server();
    let token = Some(ADMIN_TOKEN);
    let deploy = |name: &'static str, body: &str, port: u16| {
        let manifest = serde_json::json!({
            "bundle": format!("export default {{ fetch() {{ return new Response('{body}'); }} }};"),
            "port": port,
        });
        let isopod = &isopod;
        async move {
            isopod
                .admin(
                    "PUT",
                    &format!("/apps/{name}"),
                    token,
                    Some(("application/json", manifest.to_string())),
                )
                .await
        }
    };
    let on_port = |port: u16| {
        let mut endpoint = isopod.clone_addr();
        endpoint.set_port(port);
        endpoint
    };
    let refused = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_err();

    let first = crate::support::free_port();
    let (status, body) = deploy("ported", "v1", first).await;
    assert_eq!(status, 201, "{body}");
    // Any host: the port is the app's.
    assert_eq!(
        on_port(first).get_host("anything.example", "/").await.2,
        "v1"
    );
    let (_, shown) = isopod.admin("GET", "/apps/ported", token, None).await;
    assert_eq!(shown["port"], first);

    // A hot-swap on the same port keeps it open.
    assert_eq!(deploy("ported", "v2", first).await.0, 200);
    assert_eq!(on_port(first).get_host("x", "/").await.2, "v2");

    // Ports that cannot be the app's, with the reason; nothing changes.
    let (status, body) = deploy("other", "o", first).await;
    assert_admin_refused(status, &body, "already belongs to app 'ported'");
    let (status, body) = deploy("ported", "v3", isopod.addr.port()).await;
    assert_admin_refused(status, &body, "isopod's own listeners");
    assert_eq!(on_port(first).get_host("x", "/").await.2, "v2");

    // A manifest with another port moves the app there.
    let second = crate::support::free_port();
    assert_eq!(deploy("ported", "v4", second).await.0, 200);
    assert_eq!(on_port(second).get_host("x", "/").await.2, "v4");
    assert!(refused(first), "the old port still accepts connections");

    assert_eq!(
        isopod.admin("DELETE", "/apps/ported", token, None).await.0,
        200
    );
    assert!(
        refused(second),
        "a removed app's port still accepts connections"
    );
}

#[tokio::test]
async fn a_broken_bundle_is_refused_with_file_and_line_and_the_old_version_keeps_serving() {
    let isopod = server();
    let token = Some(ADMIN_TOKEN);
    let ok = js("export default { fetch() { return new Response('good'); } };");
    assert_eq!(isopod.admin("PUT", "/apps/app", token, ok).await.0, 201);

    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/app",
            token,
            js("export default {\n  fetch() {\n    return new Response(;\n  }\n};\n"),
        )
        .await;
    assert_eq!(status, 400);
    let reason = body["error"].as_str().unwrap();
    assert!(
        reason.contains("SyntaxError") && reason.contains("app.js:3:"),
        "{reason}"
    );

    let (status, body) = isopod
        .admin("PUT", "/apps/app", token, js("throw new Error('at load');"))
        .await;
    assert_admin_refused(status, &body, "at load");

    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/app",
            token,
            js("while (true) {}\nexport default {};"),
        )
        .await;
    assert_admin_refused(status, &body, "startup CPU budget of 400 ms");

    assert_eq!(isopod.get_host("app.localhost", "/").await.2, "good");
}

#[tokio::test]
async fn pool_statistics() {
    let isopod = server();
    let token = Some(ADMIN_TOKEN);
    let counter =
        js("let n = 0; export default { fetch() { return new Response(String(++n)); } };");
    assert_eq!(
        isopod.admin("PUT", "/apps/count", token, counter).await.0,
        201
    );
    for _ in 0..5 {
        assert_eq!(isopod.get_host("count.localhost", "/").await.0, 200);
    }
    let (status, pool) = isopod.admin("GET", "/admin/pool", token, None).await;
    assert_eq!(status, 200);
    assert_eq!(pool["max_instances"], 1000);
    // The app's instance, plus the spares the threads keep ready.
    let spares = pool["spares"].as_u64().unwrap();
    assert!(spares <= 4, "{pool}");
    // A refill may be mid-creation (reserved, not yet a spare) on each of
    // the two threads.
    let cached = pool["cached"].as_u64().unwrap();
    assert!((1 + spares..=3 + spares).contains(&cached), "{pool}");
    assert_eq!(pool["free"].as_u64().unwrap(), 1000 - cached);
    assert_eq!(
        pool["instances_per_thread"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>(),
        1
    );
    assert_eq!(
        pool["hits"].as_u64().unwrap() + pool["misses"].as_u64().unwrap(),
        5
    );
    // The deploy left the new version warm: every request was a hit.
    assert_eq!(pool["misses"], 0, "{pool}");
    assert_eq!(pool["hit_rate"].as_f64(), Some(1.0));
    assert!(pool["cold_start_p50_ms"].as_f64().unwrap() > 0.0);
    let row = &pool["instances"][0];
    assert_eq!(
        (row["app"].as_str(), row["requests_served"].as_u64()),
        (Some("count"), Some(5))
    );
    // A live isolate's heap is at least a few hundred kilobytes.
    assert!(row["heap_used_bytes"].as_u64().unwrap() > 100_000, "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_under_load_fails_no_request_and_mixes_no_versions() {
    let isopod = std::sync::Arc::new(server());
    let token = Some(ADMIN_TOKEN);
    let version = |v: &str| {
        js(&format!(
            "export default {{ fetch(request, env, ctx) {{\n\
               ctx.waitUntil(new Promise((r) => setTimeout(r, 50)));\n\
               let sent = 0;\n\
               return new Response(new ReadableStream({{ async pull(c) {{\n\
                 await new Promise((r) => setTimeout(r, 5));\n\
                 if (sent++ < 4) c.enqueue(new TextEncoder().encode('{v};')); else c.close();\n\
               }} }}));\n\
             }} }};"
        ))
    };
    assert_eq!(
        isopod
            .admin("PUT", "/apps/swap", token, version("v1"))
            .await
            .0,
        201
    );
    // Each client says when its first request was answered: the swap comes
    // once all are under way.
    let (answered, mut first_answers) = tokio::sync::mpsc::unbounded_channel();
    let load: Vec<_> = (0..8)
        .map(|_| {
            let isopod = isopod.clone();
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut bodies = Vec::new();
                for _ in 0..25 {
                    let (status, _, body) = isopod.get_host("swap.localhost", "/").await;
                    assert_eq!(status, 200, "{body}");
                    if bodies.is_empty() {
                        let _ = answered.send(());
                    }
                    bodies.push(body);
                }
                bodies
            })
        })
        .collect();
    for _ in 0..8 {
        first_answers.recv().await.expect("a client answered");
    }
    assert_eq!(
        isopod
            .admin("PUT", "/apps/swap", token, version("v2"))
            .await
            .0,
        200
    );
    let mut seen = std::collections::BTreeMap::new();
    for task in load {
        for body in task.await.unwrap() {
            assert!(
                body == "v1;v1;v1;v1;" || body == "v2;v2;v2;v2;",
                "mixed or cut body: {body}"
            );
            *seen.entry(body).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.values().sum::<i32>(), 200);
    assert!(
        seen.contains_key("v2;v2;v2;v2;"),
        "the new version never served: {seen:?}"
    );
}

/// `GET /metrics` on the admin API: the pool's counters and each app's
/// instances and kills in the Prometheus text format, behind the token.
#[tokio::test]
async fn metrics_speak_prometheus_behind_the_token() {
    let isopod = server();
    let token = Some(ADMIN_TOKEN);
    let spin = "export default { fetch(request) { if (new URL(request.url).pathname === '/spin') { for (;;) {} } return new Response('ok'); } };";
    assert_eq!(
        isopod
            .admin("PUT", "/apps/metered", token, js(spin))
            .await
            .0,
        201
    );
    assert_eq!(isopod.get_host("metered.localhost", "/").await.2, "ok");
    assert_eq!(isopod.get_host("metered.localhost", "/spin").await.0, 503);
    // A new instance serves after the kill.
    assert_eq!(isopod.get_host("metered.localhost", "/").await.2, "ok");
    let (status, _) = isopod.admin("GET", "/metrics", None, None).await;
    assert_eq!(status, 401);
    let (status, text) = isopod.admin("GET", "/metrics", token, None).await;
    assert_eq!(status, 200);
    let text = text.as_str().expect("text, not JSON").to_string();
    for line in [
        "# TYPE isopod_pool_hits counter",
        "isopod_pool_max_instances 1000",
        "isopod_app_kills_total{app=\"metered\",reason=\"cpu\"} 1",
        "isopod_app_instances{app=\"metered\"} 1",
        "isopod_app_in_flight{app=\"metered\"} 0",
    ] {
        assert!(text.contains(line), "no '{line}' in:\n{text}");
    }
    assert!(text.contains("isopod_pool_misses_total "), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}
