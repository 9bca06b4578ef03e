//! Running isopod as a platform (issue 19): the registry on disk across
//! restarts and crashes, rollback, variables and secrets, named tokens,
//! `/metrics` against the requests sent, access records and request ids,
//! trusted proxies, the log tail, and refusing to start with one line.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    admin_cli, admin_server_in, assert_admin_refused, fresh_dir, isopod_bin, manifest_json,
    run_to_exit, temp_bundle, Isopod, ADMIN_TOKEN,
};

const TOKEN: Option<&str> = Some(ADMIN_TOKEN);

/// A bundle answering `text` (and, with a `?env` query, the length of its
/// `SECRET` and its `GREETING`).
fn bundle(text: &str) -> String {
    format!(
        "export default {{ fetch(request, env) {{\
           if (new URL(request.url).search === '?env') {{\
             return Response.json({{ secret_length: (env.SECRET ?? '').length, greeting: env.GREETING ?? null }});\
           }}\
           return new Response({text:?});\
         }} }};"
    )
}

fn manifest(text: &str, extra: Value) -> Option<(&'static str, String)> {
    Some(("application/json", manifest_json(&bundle(text), extra)))
}

async fn served(isopod: &Isopod, app: &str) -> String {
    let (status, _, body) = isopod.get_host(&format!("{app}.localhost"), "/").await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_rollbacks_and_variables_survive_a_restart() {
    let dir = fresh_dir("registry");
    let mut isopod = admin_server_in(
        &dir,
        "admin_tokens = [{ name = \"ci\", token = \"ci-token-0123456789\" }]\n",
    );
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/shop",
            Some("ci-token-0123456789"),
            manifest("v1", json!({ "vars": { "GREETING": "hi" } })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["number"], 1);
    assert_eq!(served(&isopod, "shop").await, "v1");
    let (status, body) = isopod
        .admin("PUT", "/apps/shop", TOKEN, manifest("v2", json!({})))
        .await;
    assert_eq!((status, body["number"].clone()), (200, json!(2)), "{body}");
    assert_eq!(served(&isopod, "shop").await, "v2");

    // A broken bundle is refused with its location; v2 keeps serving.
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/shop",
            TOKEN,
            Some((
                "application/javascript",
                "export default {\n  fetch( {\n};".into(),
            )),
        )
        .await;
    assert_admin_refused(status, &body, "shop.js:");
    assert_eq!(served(&isopod, "shop").await, "v2");

    // Rolling back with no version named goes to the one before.
    let (status, body) = isopod
        .admin("POST", "/apps/shop/rollback", TOKEN, None)
        .await;
    assert_eq!((status, body["number"].clone()), (200, json!(3)), "{body}");
    assert_eq!(served(&isopod, "shop").await, "v1");
    let (_, env) = isopod
        .get_host("shop.localhost", "/?env")
        .await_json()
        .await;
    assert_eq!(env["greeting"], "hi", "a rollback restores the variables");

    // Variables and secrets: a new version; the secret's value is never shown.
    let secret = "s3cr3t-value-that-must-not-leak";
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/shop/vars",
            TOKEN,
            Some((
                "application/json",
                json!({ "vars": { "GREETING": "hello" }, "secrets": { "SECRET": secret } })
                    .to_string(),
            )),
        )
        .await;
    assert_eq!((status, body["number"].clone()), (200, json!(4)), "{body}");
    let (_, env) = isopod
        .get_host("shop.localhost", "/?env")
        .await_json()
        .await;
    assert_eq!(
        env,
        json!({ "secret_length": secret.len(), "greeting": "hello" })
    );

    let (status, versions) = isopod
        .admin("GET", "/apps/shop/versions", TOKEN, None)
        .await;
    assert_eq!(status, 200, "{versions}");
    let listed: Vec<(u64, bool, String, String)> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["active"].as_bool().unwrap(),
                v["origin"].as_str().unwrap().to_string(),
                v["deployed_by"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (4, true, "vars".into(), "admin".into()),
            (3, false, "rollback".into(), "admin".into()),
            (2, false, "api".into(), "admin".into()),
            (1, false, "api".into(), "ci".into()),
        ]
    );
    assert_eq!(versions["versions"][1]["rolled_back_from"], 1);
    let (_, shown) = isopod.admin("GET", "/apps/shop", TOKEN, None).await;
    assert_eq!(shown["secrets"], json!(["SECRET"]));
    assert_eq!(shown["number"], 4);
    for text in [versions.to_string(), shown.to_string()] {
        assert!(!text.contains(secret), "a secret in the admin API: {text}");
    }

    // A clean stop, then a restart on the same data directory: the same
    // version, with its variables and secret, and the same history.
    isopod.signal("TERM");
    assert!(isopod.wait_for_exit().success());
    let logged: Vec<String> = isopod.logs().iter().map(Value::to_string).collect();
    assert!(
        logged.iter().all(|line| !line.contains(secret)),
        "a secret in the logs"
    );
    let isopod = admin_server_in(&dir, "");
    let (_, env) = isopod
        .get_host("shop.localhost", "/?env")
        .await_json()
        .await;
    assert_eq!(
        env,
        json!({ "secret_length": secret.len(), "greeting": "hello" })
    );
    assert_eq!(served(&isopod, "shop").await, "v1");
    let (_, again) = isopod
        .admin("GET", "/apps/shop/versions", TOKEN, None)
        .await;
    assert_eq!(again, versions);

    // Rolling back to a named version, and to one that does not exist.
    let (status, body) = isopod
        .admin(
            "POST",
            "/apps/shop/rollback",
            TOKEN,
            Some(("application/json", json!({ "version": 2 }).to_string())),
        )
        .await;
    assert_eq!((status, body["number"].clone()), (200, json!(5)), "{body}");
    assert_eq!(served(&isopod, "shop").await, "v2");
    let (status, body) = isopod
        .admin(
            "POST",
            "/apps/shop/rollback",
            TOKEN,
            Some(("application/json", json!({ "version": 99 }).to_string())),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(served(&isopod, "shop").await, "v2");
}

/// Helpers on a response for the tests above.
trait AwaitJson {
    async fn await_json(self) -> (u16, Value);
}

impl<F: std::future::Future<Output = (u16, http::HeaderMap, String)>> AwaitJson for F {
    async fn await_json(self) -> (u16, Value) {
        let (status, _, body) = self.await;
        assert_eq!(status, 200, "{body}");
        (status, serde_json::from_str(&body).expect("JSON"))
    }
}

/// A pseudo-random number from the clock, for where a test cuts in.
fn random_below(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos.wrapping_mul(2_654_435_761)) % bound.max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_deploys_leaves_a_version_that_serves() {
    let dir = fresh_dir("crash");
    let mut acknowledged = 0u64;
    // Three crashes at random points of a loop of 100 deploys; the fourth
    // process finishes the loop.
    for round in 0..4 {
        let mut isopod = admin_server_in(&dir, "keep_versions = 5\n");
        if acknowledged > 0 {
            let body = served(&isopod, "crashy").await;
            let number: u64 = body.trim_start_matches('v').parse().unwrap();
            // The deploy in flight at the kill may or may not have landed.
            assert!(
                number == acknowledged || number == acknowledged + 1,
                "serves v{number}, the last acknowledged deploy was v{acknowledged}"
            );
            let (_, versions) = isopod
                .admin("GET", "/apps/crashy/versions", TOKEN, None)
                .await;
            let active: Vec<&Value> = versions["versions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v["active"] == true)
                .collect();
            assert_eq!(active.len(), 1, "{versions}");
            assert!(versions["versions"].as_array().unwrap().len() <= 5);
            for _ in 0..10 {
                assert_eq!(served(&isopod, "crashy").await, body);
            }
            acknowledged = number;
        }
        if round == 3 {
            while acknowledged < 100 {
                let text = format!("v{}", acknowledged + 1);
                let (status, body) = isopod
                    .admin("PUT", "/apps/crashy", TOKEN, manifest(&text, json!({})))
                    .await;
                assert_eq!(status, 200, "{body}");
                acknowledged += 1;
            }
            assert_eq!(served(&isopod, "crashy").await, "v100");
            return;
        }
        // Deploys up to a random point of this round's third of the loop,
        // then a kill -9 while the next deploy is in flight.
        let kill_at = round * 33 + 5 + random_below(25);
        eprintln!("round {round}: serving v{acknowledged}, killing after v{kill_at}");
        while acknowledged < kill_at {
            let text = format!("v{}", acknowledged + 1);
            let (status, body) = isopod
                .admin("PUT", "/apps/crashy", TOKEN, manifest(&text, json!({})))
                .await;
            assert!(status == 200 || status == 201, "{body}");
            acknowledged += 1;
        }
        let admin = isopod.admin.expect("admin");
        let next = format!("v{}", acknowledged + 1);
        let in_flight = tokio::spawn(async move {
            let request = http::Request::put("/apps/crashy")
                .header("host", "admin")
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    json!({ "bundle": bundle(&next) }).to_string(),
                )))
                .unwrap();
            let stream = tokio::net::TcpStream::connect(admin).await.ok()?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .ok()?;
            tokio::spawn(connection);
            sender.send_request(request).await.ok()
        });
        tokio::time::sleep(Duration::from_micros(random_below(20_000))).await;
        isopod.signal("KILL");
        isopod.wait_for_exit();
        let _ = in_flight.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_request_by_app_and_status() {
    let isopod = admin_server_in(&fresh_dir("metrics"), "");
    let teapot = "export default { fetch(request) { return new Response('no', { status: new URL(request.url).pathname === '/missing' ? 404 : 200 }); } };";
    for (app, source) in [("alpha", teapot), ("beta", teapot)] {
        let (status, body) = isopod
            .admin(
                "PUT",
                &format!("/apps/{app}"),
                TOKEN,
                Some(("application/javascript", source.into())),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let sent = [
        ("alpha", "/", 7),
        ("alpha", "/missing", 3),
        ("beta", "/", 5),
    ];
    for (app, path, times) in sent {
        for _ in 0..times {
            isopod.get_host(&format!("{app}.localhost"), path).await;
        }
    }
    let (status, text) = isopod.admin("GET", "/metrics", TOKEN, None).await;
    assert_eq!(status, 200);
    let text = text.as_str().expect("text").to_string();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition format parses");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    let requests = "isopod_app_requests_total";
    assert_eq!(
        value(requests, &[("app", "alpha"), ("status", "2xx")]),
        7.0,
        "{text}"
    );
    assert_eq!(value(requests, &[("app", "alpha"), ("status", "4xx")]), 3.0);
    assert_eq!(value(requests, &[("app", "beta"), ("status", "2xx")]), 5.0);
    assert_eq!(value(requests, &[("app", "beta"), ("status", "4xx")]), 0.0);
    let histogram_count = |name: &str, app: &str| -> u64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get("app") == Some(app))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count as u64).max().unwrap_or(0)
                }
                _ => 0,
            })
            .sum()
    };
    assert_eq!(
        histogram_count("isopod_app_first_byte_seconds", "alpha"),
        10,
        "{text}"
    );
    assert!(
        histogram_count("isopod_app_cold_start_seconds", "beta") >= 1,
        "{text}"
    );
    assert!(value("isopod_process_resident_bytes", &[]) > 0.0);
    assert!(value("isopod_process_memory_budget_bytes", &[]) > 0.0);
    assert!(
        text.contains("isopod_pool_thread_instances{thread=\"1\"}"),
        "{text}"
    );
    assert!(
        text.contains("isopod_app_fetches_total{app=\"alpha\",outcome=\"refused\"} 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_reach_the_handler_the_response_and_every_record() {
    let isopod = admin_server_in(&fresh_dir("ids"), "");
    let app = "export default { fetch(request) {\
        if (new URL(request.url).pathname === '/spin') { for (;;) {} }\
        console.log('handled', request.headers.get('x-request-id'));\
        return Response.json({ id: request.headers.get('x-request-id'), ip: request.headers.get('cf-connecting-ip'), url: request.url });\
      } };";
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/ids",
            TOKEN,
            Some((
                "application/json",
                json!({ "bundle": app, "limits": { "cpu_ms": 50 } }).to_string(),
            )),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, headers, body) = isopod.get_host("ids.localhost", "/hello").await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        seen["id"],
        id.as_str(),
        "the handler sees the response's id"
    );
    assert_eq!(seen["ip"], "127.0.0.1");
    isopod.wait_for_log("the console record with the id", |r| {
        r["target"] == "isopod::console" && r["request_id"] == id.as_str()
    });
    let access = isopod.wait_for_log("the access record", |r| {
        r["target"] == "isopod::access" && r["request_id"] == id.as_str()
    });
    assert_eq!(access["app"], "ids");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/hello");
    assert_eq!(access["status"], 200);
    assert_eq!(access["bytes_out"], body.len());
    assert_eq!(access["complete"], true);
    assert!(access["cpu_ms"].as_f64().is_some(), "{access}");
    assert!(access["duration_ms"].as_f64().is_some(), "{access}");
    assert!(
        access["cold"].is_boolean() && access["thread"].is_u64(),
        "{access}"
    );

    let (status, headers, _) = isopod.get_host("ids.localhost", "/spin").await;
    assert_eq!(status, 503);
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    isopod.wait_for_log("the kill record with the id", |r| {
        r["target"] == "isopod::kill" && r["request_id"] == id.as_str()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let echo = "export default { fetch(request) { return Response.json({ url: request.url, ip: request.headers.get('cf-connecting-ip'), xff: request.headers.get('x-forwarded-for'), id: request.headers.get('x-request-id') }); } };";
    let forged = |isopod: &Isopod| {
        let request = http::Request::get("/path")
            .header("host", "echo.localhost")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("cf-connecting-ip", "203.0.113.9")
            .header("x-request-id", "chosen-by-the-client")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let addr = isopod.addr;
        async move {
            let (_, headers, body) =
                crate::support::collect(crate::support::send(addr, request).await).await;
            (headers, serde_json::from_str::<Value>(&body).unwrap())
        }
    };
    for (trusted, believed) in [("", false), ("trusted_proxies = [\"127.0.0.0/8\"]\n", true)] {
        let isopod = Isopod::serve_in(
            &fresh_dir("proxy"),
            &format!("{trusted}[[apps]]\nname = \"echo\"\nbundle = \"echo.js\"\n"),
            &[("echo.js", echo)],
            &[],
        );
        let (headers, seen) = forged(&isopod).await;
        let id = headers["x-request-id"].to_str().unwrap();
        assert_eq!(seen["id"], id);
        if believed {
            assert_eq!(seen["ip"], "203.0.113.9");
            assert_eq!(seen["xff"], "203.0.113.9");
            assert_eq!(seen["url"], "https://echo.localhost/path");
            assert_eq!(id, "chosen-by-the-client");
        } else {
            assert_eq!(seen["ip"], "127.0.0.1", "{seen}");
            assert_eq!(seen["xff"], "127.0.0.1", "{seen}");
            assert_eq!(seen["url"], "http://echo.localhost/path");
            assert_ne!(id, "chosen-by-the-client");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_follows_an_apps_log_and_never_prints_a_secret() {
    let isopod = admin_server_in(&fresh_dir("tail"), "");
    let url = format!("http://{}", isopod.admin.expect("admin"));
    let source = "export default { fetch(request, env) { console.log('saw', new URL(request.url).pathname); return new Response(env.SECRET.length.toString()); } };";
    let path = temp_bundle("tail.js", source);
    let secret = "tail-secret-never-printed-42";
    let (ok, out, err) = admin_cli(
        &url,
        ADMIN_TOKEN,
        &[
            "deploy",
            "tail",
            path.to_str().unwrap(),
            "--secret",
            &format!("SECRET={secret}"),
        ],
    );
    assert!(ok, "{err}");
    assert!(!out.contains(secret) && !err.contains(secret));
    assert_eq!(served(&isopod, "tail").await, secret.len().to_string());
    isopod.get_host("tail.localhost", "/before").await;

    let mut follower = Command::new(isopod_bin())
        .args(["logs", "tail", "--follow"])
        .env("ISOPOD_ADMIN_URL", &url)
        .env("ISOPOD_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("isopod logs runs");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line with '{needle}' from isopod logs --follow"));
            assert!(!line.contains(secret));
            if line.contains(needle) {
                return line;
            }
        }
    };
    // The recent record comes first: from then on the tail is live.
    wait_for("saw /before");
    isopod
        .get_host("tail.localhost", "/after-the-tail-began")
        .await;
    wait_for("saw /after-the-tail-began");
    let access = wait_for("GET /after-the-tail-began 200");
    assert!(access.contains("access"), "{access}");
    let _ = follower.kill();
    let _ = follower.wait();

    for args in [
        vec!["apps"],
        vec!["apps", "--json"],
        vec!["versions", "tail"],
        vec!["versions", "tail", "--json"],
        vec!["logs", "tail"],
    ] {
        let (ok, out, err) = admin_cli(&url, ADMIN_TOKEN, &args);
        assert!(ok, "{args:?}: {err}");
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{args:?}: {out}"
        );
    }
    let (ok, out, _) = admin_cli(&url, ADMIN_TOKEN, &["versions", "tail"]);
    assert!(ok && out.lines().count() == 2, "{out}");
    let (ok, out, err) = admin_cli(&url, ADMIN_TOKEN, &["rollback", "tail"]);
    assert!(
        !ok && err.contains("no earlier version to roll back to (409"),
        "{out} {err}"
    );
}

#[test]
fn serve_refuses_to_start_with_one_line_naming_the_problem() {
    let dir = fresh_dir("refusals");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let check = |config: &str, expected: &str| {
        let (ok, stderr) = run_to_exit(&["serve", "--config", config]);
        assert!(!ok, "{config} started");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("no error line: {stderr}"));
        assert!(line.contains(expected), "{line}");
    };
    let bad_key = write("bad-key.toml", "listen = \"127.0.0.1:0\"\nthreds = 2\n");
    check(&bad_key, "bad-key.toml:2:1: unknown field `threds`");
    let bad_value = write(
        "bad-value.toml",
        "listen = \"127.0.0.1:0\"\nthreads = \"two\"\n",
    );
    check(&bad_value, "bad-value.toml:2:");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let busy = write(
        "busy.toml",
        &format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"busy-data\"\n"),
    );
    check(&busy, &format!("cannot listen on 127.0.0.1:{port}"));
    write("not-a-dir", "a file where the data directory should be");
    let unwritable = write(
        "unwritable.toml",
        "listen = \"127.0.0.1:0\"\ndata_dir = \"not-a-dir\"\n",
    );
    check(&unwritable, "cannot use the data directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_declaration_is_a_new_version_an_unchanged_one_leaves_the_api_s() {
    let dir = fresh_dir("declared");
    let config = |text: &str| {
        std::fs::write(dir.join("app.js"), bundle(text)).unwrap();
        format!(
            "admin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             [[apps]]\nname = \"site\"\nbundle = \"app.js\"\n"
        )
    };
    let isopod = Isopod::serve_in(&dir, &config("declared v1"), &[], &[]);
    assert_eq!(served(&isopod, "site").await, "declared v1");
    let (status, body) = isopod
        .admin(
            "PUT",
            "/apps/site",
            TOKEN,
            manifest("from the API", json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    drop(isopod);

    // The same declaration: the API's version stands.
    let isopod = Isopod::serve_in(&dir, &config("declared v1"), &[], &[]);
    assert_eq!(served(&isopod, "site").await, "from the API");
    drop(isopod);

    // A changed declaration: a new version, from the config file.
    let isopod = Isopod::serve_in(&dir, &config("declared v2"), &[], &[]);
    assert_eq!(served(&isopod, "site").await, "declared v2");
    let (_, versions) = isopod
        .admin("GET", "/apps/site/versions", TOKEN, None)
        .await;
    let history: Vec<(u64, &str, &str)> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["origin"].as_str().unwrap(),
                v["deployed_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            (3, "config", "config"),
            (2, "api", "admin"),
            (1, "config", "config")
        ]
    );

    // The CLI rolls back to a named version.
    let url = format!("http://{}", isopod.admin.expect("admin"));
    let (ok, out, err) = admin_cli(&url, ADMIN_TOKEN, &["rollback", "site", "2"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("site now serves version 4"), "{out}");
    assert_eq!(served(&isopod, "site").await, "from the API");
}
