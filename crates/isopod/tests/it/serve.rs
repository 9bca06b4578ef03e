//! `isopod serve`: many apps in one process, routed by host, path and port,
//! in pooled or isolate-per-request mode.

use crate::support::{free_port, Isopod};

/// An app that names itself and counts its requests (per instance).
fn named(name: &str) -> String {
    format!(
        "let n = 0;\nexport default {{ fetch(request) {{ n++; return new Response(`{name} ${{n}} ${{new URL(request.url).pathname}}`); }} }};\n"
    )
}

#[tokio::test]
async fn requests_are_routed_by_host_path_and_port() {
    let port = free_port();
    let config = format!(
        r#"threads = 2

[[apps]]
name = "exact"
bundle = "exact.js"
routes = [{{ host = "api.example.com" }}]

[[apps]]
name = "wild"
bundle = "wild.js"
routes = [{{ host = "*.example.com" }}]

[[apps]]
name = "versioned"
bundle = "versioned.js"
routes = [{{ host = "api.example.com", path = "/v2" }}]

[[apps]]
name = "plain"
bundle = "plain.js"

[[apps]]
name = "own-port"
bundle = "own.js"
port = {port}
"#
    );
    let bundles = [
        ("exact.js", named("exact")),
        ("wild.js", named("wild")),
        ("versioned.js", named("versioned")),
        ("plain.js", named("plain")),
        ("own.js", named("own")),
    ];
    let bundles: Vec<(&str, &str)> = bundles.iter().map(|(n, s)| (*n, s.as_str())).collect();
    let isopod = Isopod::serve(&config, &bundles);

    let body = |r: (u16, http::HeaderMap, String)| (r.0, r.2);
    assert_eq!(
        body(isopod.get_host("api.example.com", "/users").await),
        (200, "exact 1 /users".into())
    );
    assert_eq!(
        body(isopod.get_host("api.example.com:443", "/v2/users").await),
        (200, "versioned 1 /v2/users".into())
    );
    assert_eq!(
        body(isopod.get_host("shop.example.com", "/").await),
        (200, "wild 1 /".into())
    );
    assert_eq!(
        body(isopod.get_host("plain.localhost", "/x").await),
        (200, "plain 1 /x".into())
    );
    let (status, _, reason) = isopod.get_host("nobody.test", "/").await;
    assert_eq!(status, 404);
    assert!(reason.contains("no app is routed"), "{reason}");

    // The app's own port answers whatever the host.
    let mut own = Isopod::clone_addr(&isopod);
    own.set_port(port);
    let (status, _, text) = own.get_host("anything.test", "/p").await;
    assert_eq!((status, text.as_str()), (200, "own 1 /p"));
}

#[tokio::test]
async fn pooled_apps_keep_state_and_per_request_apps_start_fresh() {
    let config = r#"threads = 2

[[apps]]
name = "pooled"
bundle = "counter.js"

[[apps]]
name = "fresh"
bundle = "counter.js"
mode = "isolate-per-request"
"#;
    let counter =
        "let n = 0;\nexport default { fetch() { n++; return new Response(String(n)); } };\n";
    let isopod = Isopod::serve(config, &[("counter.js", counter)]);
    for expected in 1..=5 {
        // Connections land on either thread; a pooled app still has one
        // instance, on its home thread.
        assert_eq!(
            isopod.get_host("pooled.localhost", "/").await.2,
            expected.to_string()
        );
        assert_eq!(isopod.get_host("fresh.localhost", "/").await.2, "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_concurrent_first_requests_to_a_cold_app_all_succeed() {
    let config = "threads = 2\n\n[[apps]]\nname = \"cold\"\nbundle = \"cold.js\"\n";
    let bundle = "let n = 0;\nexport default { async fetch() { n++; await new Promise((r) => setTimeout(r, 10)); return new Response('ok'); } };\n";
    let isopod = std::sync::Arc::new(Isopod::serve(config, &[("cold.js", bundle)]));
    let requests: Vec<_> = (0..500)
        .map(|_| {
            let isopod = isopod.clone();
            tokio::spawn(async move { isopod.get_host("cold.localhost", "/").await })
        })
        .collect();
    for request in requests {
        let (status, _, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
}

#[tokio::test]
async fn more_apps_than_the_cap_evict_and_every_request_is_counted() {
    let token = crate::support::ADMIN_TOKEN;
    let mut config = format!("threads = 2\nspares_per_thread = 0\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{token}\"\n");
    let mut bundles = Vec::new();
    for i in 0..8 {
        config.push_str(&format!(
            "\n[[apps]]\nname = \"app{i}\"\nbundle = \"app{i}.js\"\n"
        ));
        bundles.push((format!("app{i}.js"), named(&format!("app{i}"))));
    }
    let bundles: Vec<(&str, &str)> = bundles
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    // The environment overrides the config's cap (default 1000).
    let isopod = Isopod::serve_with_env(&config, &bundles, &[("ISOLATE_POOL_SIZE", "3")]);
    let mut sent = 0;
    for _round in 0..3 {
        for i in 0..8 {
            let (status, _, body) = isopod.get_host(&format!("app{i}.localhost"), "/").await;
            assert_eq!(status, 200, "{body}");
            assert!(body.starts_with(&format!("app{i} ")), "{body}");
            sent += 1;
        }
    }
    let (_, pool) = isopod.admin("GET", "/admin/pool", Some(token), None).await;
    assert_eq!(pool["max_instances"], 3);
    assert_eq!(
        pool["hits"].as_u64().unwrap() + pool["misses"].as_u64().unwrap(),
        sent,
        "{pool}"
    );
    assert!(pool["evictions"].as_u64().unwrap() >= 8 * 3 - 3, "{pool}");
    assert!(pool["cached"].as_u64().unwrap() <= 3, "{pool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_app_gets_a_replica_a_light_one_does_not_and_idle_replicas_retire() {
    let token = crate::support::ADMIN_TOKEN;
    let config = format!(
        "threads = 2\nspares_per_thread = 0\nreplica_idle_ms = 400\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{token}\"\n\n\
         [[apps]]\nname = \"busy\"\nbundle = \"busy.js\"\n\n[[apps]]\nname = \"light\"\nbundle = \"light.js\"\n"
    );
    // ~5 ms of CPU per request: one thread cannot keep up with 16 clients.
    // (Counted in iterations: the clock stands still while JavaScript runs.)
    let busy = "export default { fetch() { let x = 0; for (let i = 0; i < 5e6; i++) x = (x + i * 7) | 0; return new Response('busy' + (x & 0)); } };\n";
    let light = "export default { fetch() { return new Response('light'); } };\n";
    let isopod = std::sync::Arc::new(Isopod::serve(
        &config,
        &[("busy.js", busy), ("light.js", light)],
    ));

    let load = |host: &'static str, clients: usize, requests: usize| {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let isopod = isopod.clone();
                // Every request on a new connection: the kernel spreads
                // them over both threads.
                tokio::spawn(async move {
                    for _ in 0..requests {
                        assert_eq!(isopod.get_host(host, "/").await.0, 200);
                    }
                })
            })
            .collect();
        async move {
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
    load("light.localhost", 2, 100).await;
    load("busy.localhost", 16, 25).await;

    let (_, pool) = isopod.admin("GET", "/admin/pool", Some(token), None).await;
    let rows = pool["instances"].as_array().unwrap();
    let of = |app: &str| rows.iter().filter(|r| r["app"] == app).collect::<Vec<_>>();
    assert!(
        of("light").iter().all(|r| r["replica"] == false),
        "a light app got a replica: {pool}"
    );
    let busy_rows = of("busy");
    let replica = busy_rows
        .iter()
        .find(|r| r["replica"] == true)
        .unwrap_or_else(|| panic!("the busy app got no replica: {pool}"));
    let home = busy_rows.iter().find(|r| r["replica"] == false).unwrap();
    assert_ne!(replica["thread"], home["thread"]);
    assert!(
        replica["requests_served"].as_u64().unwrap() >= 40,
        "the replica barely served: {pool}"
    );

    // Load stops: the replica retires (after `replica_idle`); the home
    // instance stays.
    let busy_rows = |pool: &serde_json::Value| -> Vec<serde_json::Value> {
        pool["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["app"] == "busy")
            .cloned()
            .collect()
    };
    let pool = isopod
        .await_admin("/admin/pool", "the idle replica was not retired", |pool| {
            busy_rows(pool).len() == 1
        })
        .await;
    assert_eq!(busy_rows(&pool)[0]["replica"], false, "{pool}");
}

/// SIGTERM: `/healthz` turns 503, no new connection is taken, a slow
/// streaming response in flight finishes and its `waitUntil` work runs,
/// and the process exits cleanly once they have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_and_takes_no_new_ones() {
    let token = crate::support::ADMIN_TOKEN;
    let slow = "export default { fetch(request, env, ctx) {\
        ctx.waitUntil(new Promise((r) => setTimeout(r, 300)).then(() => console.log('waitUntil ran')));\
        const encoder = new TextEncoder();\
        let sent = 0;\
        const body = new ReadableStream({ async pull(controller) {\
          await new Promise((r) => setTimeout(r, 100));\
          if (sent++ === 5) { controller.close(); return; }\
          controller.enqueue(encoder.encode(`chunk ${sent}\\n`));\
        } });\
        return new Response(body);\
      } };";
    let mut isopod = Isopod::serve(
        &format!(
            "admin_listen = \"127.0.0.1:0\"\nadmin_token = \"{token}\"\n\n[[apps]]\nname = \"slow\"\nbundle = \"slow.js\"\n"
        ),
        &[("slow.js", slow)],
    );
    let endpoint = isopod.clone_addr();
    let pending = tokio::spawn(async move { endpoint.get_host("slow.localhost", "/").await });
    isopod
        .await_admin("/apps/slow", "the request never started", |app| {
            app["usage"]["in_flight"] == 1
        })
        .await;
    assert_eq!(isopod.admin("GET", "/healthz", None, None).await.0, 200);
    // A keep-alive connection between requests is closed by the stop.
    let mut idle = tokio::net::TcpStream::connect(isopod.addr).await.unwrap();
    isopod.signal("TERM");
    isopod.wait_for_log("the stop", |r| {
        r["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("stopping"))
    });
    let (status, health) = isopod.admin("GET", "/healthz", None, None).await;
    assert_eq!((status, &health["status"]), (503, &"stopping".into()));
    // New connections are refused (the listeners close as their accept
    // loops see the stop).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(isopod.addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        tokio::task::yield_now().await;
    }
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut idle, &mut byte),
    )
    .await
    .expect("an idle connection is closed by the stop");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let (status, _, body) = pending.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "chunk 1\nchunk 2\nchunk 3\nchunk 4\nchunk 5\n");
    let exit = isopod.wait_for_exit();
    assert!(exit.success(), "{exit:?}");
    isopod.wait_for_log("the waitUntil work", |r| {
        r["target"] == "isopod::console" && r["message"] == "waitUntil ran"
    });
    isopod.wait_for_log("the clean stop", |r| {
        r["message"] == "stopped: every request in flight finished"
    });
}
