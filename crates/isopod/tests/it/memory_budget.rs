//! Under its memory budget the server serves every request it can: a miss
//! that finds the process near the budget evicts idle instances and drops
//! them before it makes its own, and resident memory stays near the
//! budget (issue 22).

use std::sync::Arc;

use crate::support::{Isopod, ADMIN_TOKEN};

/// Apps that each hold about 6 MiB of heap (48 arrays of 16,384 doubles).
const HEAVY: &str = "const ballast = [];\n\
    for (let i = 0; i < 48; i++) ballast.push(new Array(16384).fill(i + 0.5));\n\
    export default { fetch() { return new Response(String(ballast.length)); } };\n";

const APPS: usize = 24;

/// How far over its budget the process may go (the bound). A miss
/// makes room for what an instance typically holds before it makes its own,
/// and misses on both threads count each other's reservations, so the peak
/// stays under the budget itself (measured: 89-90 MiB under 96-97).
const MARGIN: f64 = 0.10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_more_apps_than_fit_every_request_is_served_near_the_budget() {
    // The process's own footprint, with nothing deployed: the budget is
    // that, what checking the apps' bundles at start leaves (about 20 MiB),
    // and room for about five of the apps.
    let idle = Isopod::serve("threads = 2\nspares_per_thread = 0\n", &[]);
    let baseline_mib = idle.rss_bytes() >> 20;
    drop(idle);
    let budget_mib = baseline_mib + 70;
    // Version snapshots off: each of these apps' would hold its 6 MiB of
    // ballast (see ARCHITECTURE.md, "Version snapshots", on their memory).
    let mut config = format!(
        "threads = 2\nspares_per_thread = 0\nmemory_budget_mb = {budget_mib}\nsnapshots = false\n\
         admin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n"
    );
    for app in 0..APPS {
        config.push_str(&format!(
            "\n[[apps]]\nname = \"heavy{app}\"\nbundle = \"heavy.js\"\n"
        ));
    }
    let isopod = Arc::new(Isopod::serve(&config, &[("heavy.js", HEAVY)]));

    // One client, one request at a time, every app in turn, twice.
    for round in 0..2 {
        for app in 0..APPS {
            let (status, _, body) = isopod.get_host(&format!("heavy{app}.localhost"), "/").await;
            assert_eq!(status, 200, "round {round}, app {app}: {body}");
        }
    }
    // Two clients at once, in opposite orders.
    let clients: Vec<_> = [false, true]
        .into_iter()
        .map(|reversed| {
            let isopod = isopod.clone();
            tokio::spawn(async move {
                for step in 0..APPS {
                    let app = if reversed { APPS - 1 - step } else { step };
                    let (status, _, body) =
                        isopod.get_host(&format!("heavy{app}.localhost"), "/").await;
                    assert_eq!(status, 200, "app {app}: {body}");
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }

    let peak_mib = isopod.peak_rss_bytes() as f64 / f64::from(1 << 20);
    let (_, pool) = isopod
        .admin("GET", "/admin/pool", Some(ADMIN_TOKEN), None)
        .await;
    assert!(
        peak_mib <= budget_mib as f64 * (1.0 + MARGIN),
        "peak RSS {peak_mib:.0} MiB against a budget of {budget_mib} MiB: {pool}"
    );
    assert!(pool["evictions"].as_u64().unwrap() > 0, "{pool}");
    assert!(pool["teardowns"].as_u64().unwrap() > 0, "{pool}");
    assert_eq!(pool["max_instances"], 1000, "{pool}");
    eprintln!(
        "memory budget {budget_mib} MiB (baseline {baseline_mib}), peak RSS {peak_mib:.0} MiB, \
         evictions {}, teardowns {}",
        pool["evictions"], pool["teardowns"]
    );
}
