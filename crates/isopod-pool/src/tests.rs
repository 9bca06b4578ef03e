//! The pool's semantics, through its public API.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use isopod_runtime::{AppConfig, Bundle, IncomingRequest};

use crate::{AppVersion, ExecutionMode, Pool, PoolConfig, PoolError};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A pool of `threads` threads, `max_instances` cap and `spares` per thread.
fn pool(threads: usize, max_instances: usize, spares: usize) -> Pool {
    Pool::start(PoolConfig {
        threads,
        max_instances,
        spares_per_thread: spares,
        ..PoolConfig::default()
    })
    .unwrap()
}

fn get(path: &str) -> IncomingRequest {
    IncomingRequest {
        method: http::Method::GET,
        version: http::Version::HTTP_11,
        url: format!("http://app.localhost{path}"),
        headers: Default::default(),
        body: None,
        received: std::time::Instant::now(),
        request_id: "".into(),
    }
}

fn version(app: &str, source: &str, mode: ExecutionMode) -> Arc<AppVersion> {
    AppVersion::new(
        AppConfig::new(app),
        Bundle::from_source(&format!("{app}.js"), source),
        mode,
    )
}

async fn text(pool: &Pool, version: &Arc<AppVersion>, path: &str) -> String {
    let response = pool.dispatch(version, get(path)).await.expect("a response");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

const COUNTER: &str =
    "let n = 0; export default { fetch() { n++; return new Response(String(n)); } };";

#[test]
fn pooled_instances_keep_state_and_per_request_isolates_do_not() {
    let pool = pool(2, 10, 0);
    runtime().block_on(async {
        let pooled = version("pooled", COUNTER, ExecutionMode::Pooled);
        let fresh = version("fresh", COUNTER, ExecutionMode::IsolatePerRequest);
        for expected in ["1", "2", "3"] {
            assert_eq!(text(&pool, &pooled, "/").await, expected);
            assert_eq!(text(&pool, &fresh, "/").await, "1");
        }
        let stats = pool.stats().await;
        assert_eq!((stats.hits, stats.misses), (2, 4));
        assert_eq!(
            stats.instances.len(),
            1,
            "per-request isolates are not pooled"
        );
        assert_eq!(stats.instances[0].requests_served, 3);
    });
}

#[test]
fn more_apps_than_the_cap_evict_and_every_request_is_a_hit_or_a_miss() {
    let pool = pool(2, 3, 0);
    runtime().block_on(async {
        let apps: Vec<_> = (0..6)
            .map(|i| version(&format!("app{i}"), COUNTER, ExecutionMode::Pooled))
            .collect();
        let mut sent = 0;
        for round in 0..3 {
            for app in &apps {
                text(&pool, app, "/").await;
                sent += 1;
            }
            let _ = round;
        }
        // Instances stop asynchronously once evicted.
        let stats = await_stats(&pool, "evicted instances never stopped", |stats| {
            stats.cached <= 3
        })
        .await;
        assert_eq!(stats.hits + stats.misses, sent);
        assert!(stats.evictions > 0, "{stats:?}");
        assert!(stats.cached <= 3, "{stats:?}");
        assert_eq!(stats.free, 3 - stats.cached);
        assert!(stats.cold_start_p50_ms.is_some());
    });
}

#[test]
fn a_burst_on_a_cold_app_creates_one_instance() {
    let pool = Arc::new(pool(2, 10, 0));
    runtime().block_on(async {
        let app = version("burst", COUNTER, ExecutionMode::Pooled);
        let requests: Vec<_> = (0..300)
            .map(|_| {
                let pool = pool.clone();
                let app = app.clone();
                tokio::spawn(async move { text(&pool, &app, "/").await })
            })
            .collect();
        let mut answers = Vec::new();
        for request in requests {
            answers.push(request.await.unwrap().parse::<u32>().unwrap());
        }
        answers.sort();
        assert_eq!(
            answers,
            (1..=300).collect::<Vec<_>>(),
            "one instance served them all"
        );
        let stats = pool.stats().await;
        assert_eq!((stats.misses, stats.hits), (1, 299));
    });
}

#[test]
fn a_new_version_takes_new_requests_while_the_old_one_finishes_its_own() {
    let pool = pool(2, 10, 0);
    runtime().block_on(async {
        let v1 = version(
            "swap",
            "export default { fetch(request, env, ctx) {\n\
               let sent = 0;\n\
               ctx.waitUntil(new Promise((r) => setTimeout(r, 300)));\n\
               return new Response(new ReadableStream({ async pull(c) {\n\
                 await new Promise((r) => setTimeout(r, 100));\n\
                 if (sent++ < 3) c.enqueue(new TextEncoder().encode('v1;')); else c.close();\n\
               } }));\n\
             } };",
            ExecutionMode::Pooled,
        );
        let streaming = pool.dispatch(&v1, get("/")).await.unwrap();
        let v2 = version(
            "swap",
            "export default { fetch() { return new Response('v2'); } };",
            ExecutionMode::Pooled,
        );
        pool.deployed(&v2);
        assert_eq!(text(&pool, &v2, "/").await, "v2");
        // The v1 response, begun before the swap, completes from v1.
        let body = streaming.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"v1;v1;v1;");
        // Once its waitUntil work is done the old instance is gone.
        let current = v2.id.to_string();
        await_stats(&pool, "the retired instance was not released", |stats| {
            stats.cached == 1 && stats.instances.iter().all(|row| row.version == current)
        })
        .await;
    });
}

#[test]
fn a_miss_when_every_instance_is_busy_at_the_cap_is_refused() {
    let pool = pool(1, 1, 0);
    runtime().block_on(async {
        let busy = version(
            "busy",
            "export default { async fetch() { await new Promise((r) => setTimeout(r, 500)); return new Response('done'); } };",
            ExecutionMode::Pooled,
        );
        let other = version("other", COUNTER, ExecutionMode::Pooled);
        let (first, second) = tokio::join!(pool.dispatch(&busy, get("/")), async {
            // Once the busy request is in flight on the one instance.
            await_stats(&pool, "the busy request never started", |stats| {
                stats.instances.iter().any(|row| row.in_flight > 0)
            })
            .await;
            pool.dispatch(&other, get("/")).await
        });
        assert_eq!(first.unwrap().status(), 200);
        assert!(matches!(second, Err(PoolError::AtCapacity)), "{:?}", second.map(|r| r.status()));
        // Idle now: the next miss evicts it.
        assert_eq!(text(&pool, &other, "/").await, "1");
    });
}

/// Waits (up to thirty seconds, a loaded machine's margin) until the
/// pool's statistics satisfy `done`, and returns them: the test waits for
/// the event it needs, not for a guessed delay.
async fn await_stats(
    pool: &Pool,
    why: &str,
    done: impl Fn(&crate::PoolStats) -> bool,
) -> crate::PoolStats {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = pool.stats().await;
        if done(&stats) {
            return stats;
        }
        assert!(std::time::Instant::now() < deadline, "{why}: {stats:?}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the pool holds `spares` spares.
async fn await_spares(pool: &Pool, spares: usize, why: &str) {
    await_stats(pool, why, |stats| stats.spares >= spares).await;
}

#[test]
fn a_taken_spare_is_replaced() {
    // Room under the cap for the app's instance and a new spare.
    let pool = pool(1, 10, 1);
    runtime().block_on(async {
        await_spares(&pool, 1, "the spare never appeared").await;
        let app = version("replaced", COUNTER, ExecutionMode::Pooled);
        assert_eq!(text(&pool, &app, "/").await, "1");
        // The refill sleeps while the set is full; taking the spare wakes it.
        await_spares(&pool, 1, "the taken spare was not replaced").await;
        let stats = pool.stats().await;
        assert_eq!(stats.blank_creations, 2, "{stats:?}");
        assert_eq!((stats.cached, stats.spares), (2, 1), "{stats:?}");
    });
}

#[test]
fn spares_are_kept_ready_and_taken_by_misses() {
    // The cap leaves room for the spares only, so the refill cannot race
    // the assertions below.
    let pool = pool(2, 2, 1);
    runtime().block_on(async {
        // The refill runs while the threads are idle.
        await_spares(&pool, 2, "spares never appeared").await;
        let stats = pool.stats().await;
        assert_eq!(
            (stats.cached, stats.spares),
            (2, 2),
            "spares count toward the cap"
        );
        assert_eq!(stats.blank_creations, 2);
        let app = version("spared", COUNTER, ExecutionMode::Pooled);
        assert_eq!(text(&pool, &app, "/").await, "1");
        let stats = pool.stats().await;
        assert_eq!(stats.misses, 1);
        // The miss took its thread's spare instead of creating an isolate:
        // still two live instances, one of them now the app's.
        assert_eq!((stats.cached, stats.spares), (2, 1), "{stats:?}");
        assert_eq!(
            stats.blank_creations, 2,
            "the miss created an isolate: {stats:?}"
        );
        assert_eq!(stats.instances.len(), 1);
    });
}

#[test]
fn an_instance_works_on_at_most_max_concurrency_requests_at_once() {
    let pool = Arc::new(
        Pool::start(PoolConfig {
            threads: 1,
            spares_per_thread: 0,
            max_concurrency: 3,
            ..PoolConfig::default()
        })
        .unwrap(),
    );
    runtime().block_on(async {
        // Each request reports how many are inside the handler with it.
        let app = version(
            "capped",
            "let inside = 0, most = 0;\n\
             export default { async fetch() {\n\
               inside++; most = Math.max(most, inside);\n\
               await new Promise((r) => setTimeout(r, 20));\n\
               inside--;\n\
               return new Response(String(most));\n\
             } };",
            ExecutionMode::Pooled,
        );
        let requests: Vec<_> = (0..12)
            .map(|_| {
                let (pool, app) = (pool.clone(), app.clone());
                tokio::spawn(async move { text(&pool, &app, "/").await.parse::<u32>().unwrap() })
            })
            .collect();
        let mut most = 0;
        for request in requests {
            most = most.max(request.await.unwrap());
        }
        assert_eq!(most, 3, "the cap was not enforced, or never reached");
    });
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

#[test]
fn creating_and_evicting_ten_thousand_instances_returns_their_memory() {
    // Each app is a new version; with a cap of 8, every request past the
    // eighth evicts an instance. ~3 MiB per live isolate: if dead ones kept
    // even a tenth of that, RSS would grow by gigabytes.
    const BOUND_MIB: f64 = 96.0;
    let pool = pool(2, 8, 0);
    runtime().block_on(async {
        let source = "export default { fetch() { return new Response('x'.repeat(1000)); } };";
        let mut after_warmup = 0.0;
        for i in 0..10_000 {
            let app = version(&format!("churn{i}"), source, ExecutionMode::Pooled);
            assert_eq!(text(&pool, &app, "/").await.len(), 1000);
            if i == 999 {
                after_warmup = rss_mib();
            }
        }
        let stats = pool.stats().await;
        assert!(stats.evictions >= 10_000 - 8, "{stats:?}");
        let grown = rss_mib() - after_warmup;
        assert!(
            grown < BOUND_MIB,
            "RSS grew by {grown:.1} MiB from 1,000 to 10,000 instances"
        );
    });
}
