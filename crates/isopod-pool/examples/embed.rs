//! Embedding isopod's pool in another Rust program: two apps, one pooled and
//! one isolate-per-request, a few requests each, then the pool's statistics.
//!
//! Run with `cargo run -p isopod-pool --example embed`.

use http_body_util::BodyExt;
use isopod_pool::{AppVersion, ExecutionMode, Pool, PoolConfig};
use isopod_runtime::{AppConfig, Bundle, IncomingRequest};

const COUNTER: &str = "let n = 0;
export default { fetch(request) { n++; return new Response(`${new URL(request.url).host}: request ${n}`); } };";

fn request(host: &str) -> IncomingRequest {
    IncomingRequest {
        method: http::Method::GET,
        version: http::Version::HTTP_11,
        url: format!("http://{host}/"),
        headers: Default::default(),
        body: None,
        received: std::time::Instant::now(),
        request_id: "".into(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::start(PoolConfig {
        threads: 2,
        max_instances: 100,
        spares_per_thread: 1,
        ..PoolConfig::default()
    })?;
    let warm = AppVersion::new(
        AppConfig::new("warm"),
        Bundle::from_source("warm.js", COUNTER),
        ExecutionMode::Pooled,
    );
    let fresh = AppVersion::new(
        AppConfig::new("fresh"),
        Bundle::from_source("fresh.js", COUNTER),
        ExecutionMode::IsolatePerRequest,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for _ in 0..3 {
            for (version, host) in [(&warm, "warm.example"), (&fresh, "fresh.example")] {
                let response = pool.dispatch(version, request(host)).await?;
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                println!("{}", String::from_utf8_lossy(&body));
            }
        }
        let stats = pool.stats().await;
        println!(
            "hits {} misses {} live instances {} cold start p50 {:.2} ms",
            stats.hits,
            stats.misses,
            stats.cached,
            stats.cold_start_p50_ms.unwrap_or_default()
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
