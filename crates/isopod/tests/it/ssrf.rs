//! Outbound fetch policy: an app reaches no loopback address (in any
//! spelling, directly, through a redirect or through a name that resolves
//! there) and none of isopod's own listeners, unless its `allow_net` admits
//! it; every refusal is a TypeError that says why.
//!
//! Everything here connects to loopback only: the other reserved ranges are
//! covered by isopod-api's unit tests on the policy itself, without
//! connecting.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::support::{assert_admin_refused, temp_bundle, Isopod, ADMIN_TOKEN};

/// The app: fetches `?url=` and reports what happened.
const PROBE: &str = "export default { async fetch(request) {\n\
  const target = new URL(request.url).searchParams.get('url');\n\
  try {\n\
    const response = await fetch(target);\n\
    return Response.json({ ok: true, status: response.status, body: await response.text() });\n\
  } catch (error) {\n\
    return Response.json({ ok: false, name: error.constructor.name, message: String(error.message) });\n\
  }\n\
} };\n";

/// A loopback HTTP server that counts the requests it gets. `/redirect?to=URL`
/// answers 302 to URL; anything else answers `hello from PORT`.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                let service =
                    hyper::service::service_fn(move |request: http::Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, Infallible>(answer(&request, addr)) }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Upstream { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn answer(request: &http::Request<Incoming>, addr: SocketAddr) -> http::Response<Full<Bytes>> {
    let uri = request.uri();
    if uri.path() == "/redirect" {
        let to = uri
            .query()
            .and_then(|q| q.strip_prefix("to="))
            .unwrap_or_default();
        let to = percent_decode(to);
        return http::Response::builder()
            .status(302)
            .header("location", to)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    http::Response::new(Full::new(Bytes::from(format!(
        "hello from {}",
        addr.port()
    ))))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Asks the app (on `host`) to fetch `url`.
async fn probe(isopod: &Isopod, host: &str, url: &str) -> Value {
    let (status, _, body) = isopod
        .get_host(host, &format!("/?url={}", percent_encode(url)))
        .await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// `url` was refused with a TypeError naming the target and `reason`.
fn assert_refused(outcome: &Value, url: &str, target: &str, reason: &str) {
    assert_eq!(outcome["ok"], false, "{url} was fetched: {outcome}");
    assert_eq!(outcome["name"], "TypeError", "{url}: {outcome}");
    let message = outcome["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("fetch to {target} refused: ")) && message.contains(reason),
        "{url}: expected a refusal of {target} because {reason:?}, got {message:?}"
    );
}

const LOOPBACK: &str = "loopback addresses are not reachable from isopod apps";
const OWN: &str = "isopod's own listeners are not reachable from isopod apps";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_and_own_listeners_are_refused_in_every_spelling() {
    let secret = Upstream::start().await;
    let gate = Upstream::start().await;
    let config = format!(
        "threads = 2\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\n\
         [[apps]]\nname = \"probe\"\nbundle = \"probe.js\"\nallow_net = [\"{}\"]\n",
        gate.addr
    );
    let isopod = Isopod::serve(&config, &[("probe.js", PROBE)]);
    let host = "probe.localhost";
    let port = secret.addr.port();
    let admin = isopod.admin.expect("admin enabled");
    let own = isopod.addr;

    // The allow-listed upstream is reachable.
    let ok = probe(&isopod, host, &format!("http://{}/hello", gate.addr)).await;
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["body"], format!("hello from {}", gate.addr.port()));

    let redirect = |to: &str| format!("http://{}/redirect?to={}", gate.addr, percent_encode(to));
    let cases: Vec<(String, String, &str)> = vec![
        // Directly, in every spelling.
        (
            format!("http://127.0.0.1:{port}/"),
            format!("127.0.0.1:{port}"),
            LOOPBACK,
        ),
        (
            format!("http://127.1:{port}/"),
            format!("127.0.0.1:{port}"),
            LOOPBACK,
        ),
        (
            format!("http://2130706433:{port}/"),
            format!("127.0.0.1:{port}"),
            LOOPBACK,
        ),
        (
            format!("http://0.0.0.0:{port}/"),
            format!("0.0.0.0:{port}"),
            "unspecified addresses (0.0.0.0/8, ::) are not reachable",
        ),
        (
            format!("http://[::1]:{port}/"),
            format!("[::1]:{port}"),
            LOOPBACK,
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            format!("127.0.0.1:{port}"),
            LOOPBACK,
        ),
        // Through a name that resolves to loopback.
        (
            format!("http://localhost:{port}/"),
            format!("localhost:{port}"),
            "localhost resolved to",
        ),
        // The allow-listed port, by a name: the entry admits an address.
        (
            format!("http://localhost:{}/", gate.addr.port()),
            format!("localhost:{}", gate.addr.port()),
            "only by address",
        ),
        // isopod's own listeners.
        (format!("http://{admin}/healthz"), admin.to_string(), OWN),
        (format!("http://{own}/"), own.to_string(), OWN),
        (
            format!("http://localhost:{}/healthz", admin.port()),
            format!("localhost:{}", admin.port()),
            "localhost resolved to",
        ),
        // Names under localhost are loopback without a lookup (RFC 6761),
        // so trying them sends no DNS query.
        (
            format!(
                "http://admin.isopod-test.localhost:{}/healthz",
                admin.port()
            ),
            format!("admin.isopod-test.localhost:{}", admin.port()),
            "admin.isopod-test.localhost resolved to",
        ),
        (
            format!("http://Probe.LOCALHOST.:{port}/"),
            format!("probe.localhost.:{port}"),
            "localhost. resolved to",
        ),
        // Through a redirect from the allow-listed upstream.
        (
            redirect(&format!("http://127.0.0.1:{port}/")),
            format!("127.0.0.1:{port}"),
            LOOPBACK,
        ),
        (
            redirect(&format!("http://localhost:{port}/")),
            format!("localhost:{port}"),
            "localhost resolved to",
        ),
        (
            redirect(&format!("http://[::1]:{port}/")),
            format!("[::1]:{port}"),
            LOOPBACK,
        ),
        (
            redirect(&format!("http://{admin}/healthz")),
            admin.to_string(),
            OWN,
        ),
        (redirect(&format!("http://{own}/")), own.to_string(), OWN),
    ];
    for (url, target, reason) in &cases {
        let outcome = probe(&isopod, host, url).await;
        assert_refused(&outcome, url, target, reason);
    }
    // Nothing reached the upstream the app may not reach; the allowed one
    // was reached once directly and once per redirect.
    assert_eq!(secret.hits(), 0);
    assert_eq!(gate.hits(), 1 + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isopod_run_refuses_loopback_unless_allow_listed() {
    let upstream = Upstream::start().await;
    let bundle = temp_bundle("ssrf-probe.js", PROBE);
    let url = format!("http://{}/hello", upstream.addr);

    let closed = Isopod::start(&bundle, &[]);
    let outcome = probe(&closed, "localhost", &url).await;
    assert_refused(&outcome, &url, &upstream.addr.to_string(), LOOPBACK);
    let own = format!("http://{}/", closed.addr);
    let outcome = probe(&closed, "localhost", &own).await;
    assert_refused(&outcome, &own, &closed.addr.to_string(), OWN);
    assert_eq!(upstream.hits(), 0);

    let open = Isopod::start(&bundle, &["--allow-net", &upstream.addr.to_string()]);
    let outcome = probe(&open, "localhost", &url).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(upstream.hits(), 1);
    // Its own port stays refused even when listed.
    let listed = Isopod::start(&bundle, &["--allow-net", "127.0.0.1"]);
    let own = format!("http://{}/", listed.addr);
    let outcome = probe(&listed, "localhost", &own).await;
    assert_refused(&outcome, &own, &listed.addr.to_string(), OWN);
}

#[test]
fn a_bad_allow_net_entry_stops_isopod_run() {
    let bundle = temp_bundle("ssrf-bad.js", PROBE);
    let (ok, stderr) = crate::support::run_to_exit(&[
        "run",
        bundle.to_str().unwrap(),
        "--port",
        "0",
        "--allow-net",
        "http://example.com",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("invalid allow_net entry 'http://example.com'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_manifest_takes_allow_net() {
    let upstream = Upstream::start().await;
    let config =
        format!("threads = 2\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n");
    let isopod = Isopod::serve(&config, &[]);
    let token = Some(ADMIN_TOKEN);
    let manifest = |allow_net: Value| {
        Some((
            "application/json",
            json!({ "bundle": PROBE, "allow_net": allow_net }).to_string(),
        ))
    };

    let (status, body) = isopod
        .admin("PUT", "/apps/probe", token, manifest(json!(["*"])))
        .await;
    assert_admin_refused(status, &body, "invalid allow_net entry '*'");

    let url = format!("http://{}/hello", upstream.addr);
    let (status, body) = isopod
        .admin("PUT", "/apps/probe", token, manifest(json!([])))
        .await;
    assert_eq!(status, 201, "{body}");
    let outcome = probe(&isopod, "probe.localhost", &url).await;
    assert_refused(&outcome, &url, &upstream.addr.to_string(), LOOPBACK);

    let listed = json!([upstream.addr.to_string()]);
    let (status, body) = isopod
        .admin("PUT", "/apps/probe", token, manifest(listed.clone()))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, shown) = isopod.admin("GET", "/apps/probe", token, None).await;
    assert_eq!(shown["allow_net"], listed);
    let outcome = probe(&isopod, "probe.localhost", &url).await;
    assert_eq!(outcome["ok"], true, "{outcome}");
    assert_eq!(upstream.hits(), 1);
}
