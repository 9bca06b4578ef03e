//! Hostile tenants next to a well-behaved one: each hostile behaviour gets
//! its status and its kill event, the process stays up, and the neighbour's
//! requests under steady load all succeed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::support::{Isopod, ADMIN_TOKEN};

/// Answers `good` while its isolate's prototypes are intact.
const GOOD: &str = "export default { fetch() { const clean = ({}).polluted === undefined && [1].map((x) => x + 1)[0] === 2 && typeof Response === 'function'; return new Response(clean ? 'good' : 'polluted'); } };";

/// Hostile apps, each routed by host `NAME.localhost`.
const HOSTILE: &[(&str, &str)] = &[
    (
        "loop-sync",
        "function spin() { for (;;) {} }\nexport default { fetch() { spin(); } };",
    ),
    (
        "loop-async",
        "export default { async fetch() { await new Promise((r) => setTimeout(r, 1)); for (;;) {} } };",
    ),
    (
        "heap-bomb",
        "export default { fetch() { const keep = []; for (;;) keep.push(new Array(100000).fill(1.5)); } };",
    ),
    (
        "buffer-bomb",
        "export default { fetch() { const keep = []; try { for (;;) keep.push(new ArrayBuffer(4 << 20)); } catch (e) { return new Response(`${e.constructor.name} after ${keep.length}`); } } };",
    ),
    (
        "recursion",
        "function down(n) { return down(n + 1) + 1; }\nexport default { fetch(request) { if (new URL(request.url).pathname === '/uncaught') return down(0); try { down(0); } catch (e) { return new Response(e.constructor.name); } } };",
    ),
    (
        "never",
        "export default { fetch() { return new Promise(() => {}); } };",
    ),
    (
        "stray",
        "export default { fetch() { Promise.reject(new Error('stray')); return new Response('answered'); } };",
    ),
    (
        "crypto-burner",
        "export default { async fetch() {\n  const key = await crypto.subtle.importKey('raw', new Uint8Array(16), 'PBKDF2', false, ['deriveBits']);\n  for (;;) await crypto.subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt: new Uint8Array(16), iterations: 100000 }, key, 256);\n} };",
    ),
    (
        "polluter",
        "export default { fetch() { const R = Response; Object.prototype.polluted = 'yes'; Array.prototype.map = () => 'hijacked'; globalThis.Response = null; return new R(({}).polluted); } };",
    ),
];

fn config() -> String {
    let mut config =
        String::from("threads = 2\n\n[[apps]]\nname = \"good\"\nbundle = \"good.js\"\n");
    for (name, _) in HOSTILE {
        // `never` is answered by its response timeout; the others must meet
        // a limit first, also on the quarantine thread, which runs at a
        // lower priority and, while the test machine is busy, may take a
        // second to be given 50 ms of CPU.
        let timeout = if *name == "never" { 1000 } else { 10_000 };
        config.push_str(&format!(
            "\n[[apps]]\nname = \"{name}\"\nbundle = \"{name}.js\"\nlimits = {{ heap_max_mb = 32, response_timeout_ms = {timeout}, wait_until_timeout_ms = 1000 }}\n"
        ));
    }
    config
}

/// Requests the good app in a loop from 4 tasks until stopped; returns
/// (successes, failures).
fn steady_load(isopod: &Isopod, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
    let endpoint = Arc::new(isopod.clone_addr());
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (endpoint, stop, ok, failed) =
                (endpoint.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (status, _, body) = endpoint.get_host("good.localhost", "/").await;
                    if status == 200 && body == "good" {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::spawn(async move {
        for worker in workers {
            worker.await.unwrap();
        }
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    })
}

fn kill_event(isopod: &Isopod, app: &str, reason: &str) -> Value {
    isopod.wait_for_log(&format!("kill event {app}/{reason}"), |r| {
        r["target"] == "isopod::kill" && r["app"] == app && r["reason"] == reason
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_tenants_are_cut_off_and_the_neighbour_keeps_being_served() {
    let sources: Vec<(String, String)> = std::iter::once(("good.js".to_string(), GOOD.to_string()))
        .chain(
            HOSTILE
                .iter()
                .map(|(name, source)| (format!("{name}.js"), source.to_string())),
        )
        .collect();
    let bundles: Vec<(&str, &str)> = sources
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let admin = format!(
        "admin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n{}",
        config()
    );
    let isopod = Isopod::serve(&admin, &bundles);
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&isopod, stop.clone());

    // A loop before the first await: 503, a CPU kill with the loop's stack.
    let (status, _, body) = isopod.get_host("loop-sync.localhost", "/spin").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("CPU time limit"), "{body}");
    let event = kill_event(&isopod, "loop-sync", "cpu");
    assert_eq!(event["method"], "GET");
    assert_eq!(event["path"], "/spin");
    assert!(event["cpu_ms"].as_f64().unwrap() >= 50.0, "{event}");
    assert!(
        event["stack"].as_str().unwrap_or_default().contains("spin"),
        "no stack naming the loop: {event}"
    );
    assert!(event["version"].as_str().is_some_and(|v| !v.is_empty()));
    // The next request gets a fresh instance (and is cut off again).
    let (status, _, _) = isopod.get_host("loop-sync.localhost", "/again").await;
    assert_eq!(status, 503);

    // A loop after an await.
    let (status, _, body) = isopod.get_host("loop-async.localhost", "/").await;
    assert_eq!(status, 503, "{body}");
    kill_event(&isopod, "loop-async", "cpu");

    // A heap bomb: terminated near the limit, not a process abort.
    let (status, _, body) = isopod.get_host("heap-bomb.localhost", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("memory limit"), "{body}");
    let event = kill_event(&isopod, "heap-bomb", "memory");
    assert!(
        event["heap_high_water_bytes"].as_u64().unwrap() > 16 << 20,
        "{event}"
    );

    // ArrayBuffers past the budget throw a RangeError the handler catches.
    let (status, _, body) = isopod.get_host("buffer-bomb.localhost", "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("RangeError after "), "{body}");
    let buffers: usize = body
        .trim_start_matches("RangeError after ")
        .parse()
        .unwrap();
    assert!(
        buffers <= 8,
        "{buffers} buffers of 4 MiB fit a 32 MiB budget"
    );

    // Deep recursion: a catchable RangeError; uncaught, a 500.
    let (status, _, body) = isopod.get_host("recursion.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "RangeError"));
    let (status, _, _) = isopod.get_host("recursion.localhost", "/uncaught").await;
    assert_eq!(status, 500);

    // A handler that never resolves: 504 after the response timeout.
    let (status, _, body) = isopod.get_host("never.localhost", "/").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not respond"), "{body}");
    // The abandoned handler is forgotten once its waitUntil bound (1 s)
    // has passed: the instance has nothing in flight any more.
    isopod
        .await_admin(
            "/apps/never",
            "the abandoned request is still in flight",
            |app| app["usage"]["in_flight"] == 0,
        )
        .await;
    isopod.wait_for_log("the lingering-request warning", |r| {
        r["app"] == "never"
            && r["message"]
                .as_str()
                .is_some_and(|m| m.contains("no longer waited for"))
    });

    // WebCrypto work runs off the isolate's thread, each operation within
    // the cost caps; its CPU is charged back to the request all the same.
    let (status, _, body) = isopod.get_host("crypto-burner.localhost", "/derive").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("CPU time limit"), "{body}");
    let event = kill_event(&isopod, "crypto-burner", "cpu");
    assert_eq!(event["path"], "/derive");
    assert!(event["cpu_ms"].as_f64().unwrap() >= 50.0, "{event}");
    assert!(event["crypto_cpu_ms"].as_f64().unwrap() >= 40.0, "{event}");

    // A stray rejection is logged; the request is answered.
    let (status, _, body) = isopod.get_host("stray.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "answered"));
    isopod.wait_for_log("the stray rejection", |r| {
        r["app"] == "stray" && r["message"] == "unhandled promise rejection"
    });

    // Prototype pollution stays in the polluter's isolate.
    let (status, _, body) = isopod.get_host("polluter.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "yes"));
    let (status, _, body) = isopod.get_host("good.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "good"));

    // Kills are counted per app and reason, with recent events.
    let (status, app) = isopod
        .admin("GET", "/apps/loop-sync", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 200, "{app}");
    assert_eq!(app["limits"]["cpu_ms"], 50);
    assert_eq!(app["limits"]["heap_max_mb"], 32);
    assert_eq!(app["kills"]["by_reason"]["cpu"], 2, "{app}");
    assert_eq!(app["kills"]["recent"].as_array().unwrap().len(), 2);
    assert!(app["usage"]["instances"].is_number());

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert_eq!(failed, 0, "the neighbour's requests failed {failed} times");
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_on_a_killed_instance_get_503_and_the_log_says_so() {
    let bundle = "export default { async fetch(request) {\n  if (new URL(request.url).pathname === '/spin') { for (;;) {} }\n  await new Promise((r) => setTimeout(r, 400));\n  return new Response('slow');\n} };";
    let config = format!(
        "admin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\nthreads = 1\n\n[[apps]]\nname = \"shared\"\nbundle = \"shared.js\"\n"
    );
    let isopod = Isopod::serve(&config, &[("shared.js", bundle)]);
    let endpoint = Arc::new(isopod.clone_addr());
    let slow = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move { endpoint.get_host("shared.localhost", "/slow").await })
    };
    isopod
        .await_admin("/apps/shared", "the slow request never started", |app| {
            app["usage"]["in_flight"] == 1
        })
        .await;
    let (status, _, body) = isopod.get_host("shared.localhost", "/spin").await;
    assert_eq!(status, 503, "{body}");
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("another request"), "{body}");
    let event = kill_event(&isopod, "shared", "cpu");
    assert_eq!(event["collateral_requests"], 1, "{event}");
    assert_eq!(event["path"], "/spin");
    // The app is served again by a new instance, on the quarantine thread
    // (which accepts no connections), so that if it runs away again it
    // holds up no other app's requests.
    let (status, _, body) = isopod.get_host("shared.localhost", "/slow").await;
    assert_eq!((status, body.as_str()), (200, "slow"));
    let (_, pool) = isopod
        .admin("GET", "/admin/pool", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(pool["quarantine_thread"], 1, "{pool}");
    let rows: Vec<_> = pool["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["app"] == "shared")
        .collect();
    assert_eq!(rows.len(), 1, "{pool}");
    assert_eq!(rows[0]["thread"], 1, "{pool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_returned_after_a_hundred_memory_bombs() {
    let bomb = "export default { fetch() { const keep = []; for (;;) keep.push(new Array(100000).fill(1.5)); } };";
    let isopod = Isopod::serve(
        "threads = 1\nspares_per_thread = 0\n\n[[apps]]\nname = \"bomb\"\nbundle = \"bomb.js\"\nlimits = { heap_max_mb = 64 }\n\n[[apps]]\nname = \"good\"\nbundle = \"good.js\"\n",
        &[("bomb.js", bomb), ("good.js", GOOD)],
    );
    for _ in 0..3 {
        let (status, _, _) = isopod.get_host("bomb.localhost", "/").await;
        assert_eq!(status, 503);
    }
    let baseline = isopod.rss_bytes();
    for i in 0..100 {
        let (status, _, body) = isopod.get_host("bomb.localhost", "/").await;
        assert_eq!(status, 503, "bomb {i}: {body}");
        let (status, _, _) = isopod.get_host("good.localhost", "/").await;
        assert_eq!(status, 200);
    }
    let after = isopod.rss_bytes();
    // One live bomb at a time may hold its 64 MiB budget (twice that while
    // V8 finishes the GC that hit the limit); 100 retained would be GiBs.
    let bound = baseline + (192 << 20);
    assert!(
        after < bound,
        "RSS grew from {} MiB to {} MiB over 100 memory bombs (bound {} MiB)",
        baseline >> 20,
        after >> 20,
        bound >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_hygiene_answers_each_excess_with_its_status_and_reason() {
    let slow = "export default { async fetch() { await new Promise((r) => setTimeout(r, 1500)); return new Response('late'); } };";
    let stall = "export default { fetch() { let sent = false; return new Response(new ReadableStream({ pull(c) { if (!sent) { sent = true; c.enqueue(new TextEncoder().encode('first')); } else { return new Promise(() => {}); } } })); } };";
    let isopod = Isopod::serve(
        &format!("admin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\nthreads = 1\n\n[[apps]]\nname = \"small\"\nbundle = \"good.js\"\nlimits = {{ max_request_body_mb = 1 }}\n\n[[apps]]\nname = \"narrow\"\nbundle = \"slow.js\"\nlimits = {{ max_concurrent_requests = 1 }}\n\n[[apps]]\nname = \"stall\"\nbundle = \"stall.js\"\nlimits = {{ stream_idle_timeout_ms = 300 }}\n"),
        &[("good.js", GOOD), ("slow.js", slow), ("stall.js", stall)],
    );

    // A body over the app's cap, declared up front: 413 before any of it is
    // read. (Only the head is sent: the answer closes the connection, and a
    // client still writing the body would see a broken pipe instead.)
    let answer = crate::support::raw(
        &isopod,
        &format!(
            "POST / HTTP/1.1\r\nhost: small.localhost\r\ncontent-length: {}\r\n\r\n",
            2 << 20
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("at most 1 MiB"), "{answer}");

    // More than 100 header lines: 431.
    let mut request = http::Request::get("/").header("host", "small.localhost");
    for i in 0..120 {
        request = request.header(format!("x-h{i}"), "v");
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let status = raw_status(isopod.addr, request).await;
    assert_eq!(status, 431);

    // One request served at once, one queued, the third refused.
    let endpoint = Arc::new(isopod.clone_addr());
    let first: Vec<_> = (0..2)
        .map(|_| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move { endpoint.get_host("narrow.localhost", "/").await })
        })
        .collect();
    isopod
        .await_admin("/apps/narrow", "one request served and one queued", |app| {
            app["usage"]["in_flight"] == 1 && app["usage"]["waiting_for_admission"] == 1
        })
        .await;
    let (status, _, body) = isopod.get_host("narrow.localhost", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("serves 1 requests at once"), "{body}");
    for request in first {
        let (status, _, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "late"));
    }

    // A stream that stops sending is cut off after its idle timeout.
    let request = http::Request::get("/")
        .header("host", "stall.localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = crate::support::send(isopod.addr, request).await;
    assert_eq!(response.status(), 200);
    let collected = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        http_body_util::BodyExt::collect(response.into_body()),
    )
    .await
    .expect("the stalled stream was not cut off");
    assert!(collected.is_err(), "a stalled stream ended cleanly");
    isopod.wait_for_log("the idle-stream warning", |r| {
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("sent nothing for 300 ms"))
    });
}

/// Sends `request` and returns the status, even when the server closes the
/// connection right after answering.
async fn raw_status(
    addr: std::net::SocketAddr,
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> u16 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_budget_new_instances_are_refused() {
    let isopod = Isopod::serve_with_env(
        "threads = 1\nspares_per_thread = 0\n\n[[apps]]\nname = \"good\"\nbundle = \"good.js\"\n",
        &[("good.js", GOOD)],
        &[("ISOPOD_MEMORY_BUDGET_MB", "1")],
    );
    isopod.wait_for_log("the over-budget warning", |r| {
        r["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("over the memory budget"))
    });
    let (status, _, body) = isopod.get_host("good.localhost", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("memory budget"), "{body}");
}

#[tokio::test]
async fn webassembly_runs_with_its_memory_capped() {
    let bundle = crate::support::temp_bundle(
        "wasm.js",
        "const bytes = new Uint8Array([0,97,115,109,1,0,0,0,5,3,1,0,1]);\nexport default { async fetch() {\n  const { instance } = await WebAssembly.instantiate(bytes);\n  const mem = new WebAssembly.Memory({ initial: 1 });\n  let grown; try { mem.grow(4096); grown = 'grew'; } catch (e) { grown = e.constructor.name; }\n  return new Response(`${typeof instance} ${grown}`);\n} };",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let (status, _, body) = isopod.get("/").await;
    assert_eq!((status, body.as_str()), (200, "object RangeError"));
}

#[tokio::test]
async fn a_request_may_make_only_its_quota_of_subrequests() {
    // The first three fetches fail for their own reasons (nothing listens
    // on loopback port 1, or the address policy refuses it); the fourth and
    // fifth are refused by the quota before any connection is tried.
    let bundle = crate::support::temp_bundle(
        "subrequests.js",
        "export default { async fetch() {\n  const out = [];\n  for (let i = 0; i < 5; i++) {\n    try { await fetch('http://127.0.0.1:1/'); out.push('ok'); } catch (e) { out.push(e.message.startsWith('too many subrequests') ? 'quota' : 'other'); }\n  }\n  return new Response(out.join(','));\n} };",
    );
    let isopod = Isopod::start(&bundle, &["--limit", "subrequests=3"]);
    let (status, _, body) = isopod.get("/").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "other,other,other,quota,quota")
    );
    // The quota is per request.
    let (_, _, body) = isopod.get("/").await;
    assert_eq!(body, "other,other,other,quota,quota");
}

/// The crypto library's one-time set-up (seeding its random generator costs
/// about 40 ms of CPU on first use in a process) is paid at start-up, not
/// charged to the first request that generates a key.
#[tokio::test]
async fn the_first_key_generation_is_not_charged_the_crypto_libraries_set_up() {
    let bundle = crate::support::temp_bundle(
        "keygen.js",
        "export default { async fetch() {\n  const key = await crypto.subtle.generateKey({ name: 'HMAC', hash: 'SHA-256' }, true, ['sign']);\n  return new Response(String((await crypto.subtle.exportKey('raw', key)).byteLength));\n} };",
    );
    let isopod = Isopod::start(&bundle, &["--limit", "cpu_ms=15"]);
    let (status, _, body) = isopod.get("/").await;
    assert_eq!((status, body.as_str()), (200, "64"));
}
