//! Outbound `fetch` against a real HTTP server on loopback, streaming both
//! ways. Loopback is reserved, so each test allow-lists its upstream's
//! address and port (`--allow-net`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;

use crate::support::{send, temp_bundle, timed_chunks, Isopod};

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream(
    request: http::Request<Incoming>,
) -> Result<http::Response<UpstreamBody>, Infallible> {
    let full = |text: String| Full::new(Bytes::from(text)).boxed();
    let response = match request.uri().path() {
        "/json" => {
            let ua = request
                .headers()
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            http::Response::builder()
                .header("content-type", "application/json")
                .body(full(format!(
                    r#"{{"upstream":true,"method":"{}","ua":"{ua}"}}"#,
                    request.method()
                )))
        }
        "/redirect" => http::Response::builder()
            .status(302)
            .header("location", "/json")
            .body(full(String::new())),
        "/upload" => {
            let mut body = request.into_body();
            let mut total = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    total += data.len();
                }
            }
            http::Response::builder().body(full(format!("received {total} bytes")))
        }
        "/slow" => {
            let chunks = futures::stream::unfold(0, |n| async move {
                if n == 3 {
                    return None;
                }
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("part{n};")))),
                    n + 1,
                ))
            });
            http::Response::builder().body(StreamBody::new(chunks).boxed())
        }
        _ => http::Response::builder()
            .status(404)
            .body(full("nope".into())),
    };
    Ok(response.unwrap())
}

async fn start_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(upstream)),
            );
        }
    });
    addr
}

fn proxy_bundle() -> std::path::PathBuf {
    temp_bundle(
        "proxy.js",
        "export default { async fetch(request, env) {\n\
           const path = new URL(request.url).pathname;\n\
           const up = env.UPSTREAM;\n\
           if (path === '/json') { const r = await fetch(up + '/json'); return Response.json({ status: r.status, body: await r.json() }); }\n\
           if (path === '/redirect') { const r = await fetch(up + '/redirect'); return Response.json({ redirected: r.redirected, path: new URL(r.url).pathname, body: await r.json() }); }\n\
           if (path === '/slow') return fetch(up + '/slow');\n\
           if (path === '/forward') {\n\
             const copy = new Request(request); const clone = request.clone();\n\
             const r = await fetch(new Request(up + '/redirect', request));\n\
             const followed = await fetch(new Request(up + '/redirect', request), { redirect: 'follow' });\n\
             return Response.json({ copy: copy.url, clone: clone.url, probe: clone.headers.get('x-probe'), status: r.status, location: r.headers.get('location'), redirected: followed.redirected, path: new URL(followed.url).pathname, body: await followed.json() });\n\
           }\n\
           if (path === '/upload') { const r = await fetch(up + '/upload', { method: 'POST', body: request.body, duplex: 'half' }); return new Response(await r.text()); }\n\
           return new Response('?', { status: 404 });\n\
         } };\n",
    )
}

/// `isopod run` on the proxy bundle, allowed to reach `upstream` only.
fn proxy_to(upstream: SocketAddr) -> Isopod {
    Isopod::start(
        &proxy_bundle(),
        &[
            "--var",
            &format!("UPSTREAM=http://{upstream}"),
            "--allow-net",
            &upstream.to_string(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_reaches_a_loopback_server_and_follows_redirects() {
    let isopod = proxy_to(start_upstream().await);
    let json = isopod.get_json("/json").await;
    assert_eq!(json["status"], 200);
    assert_eq!(json["body"]["upstream"], true);
    assert_eq!(json["body"]["method"], "GET");
    assert_eq!(json["body"]["ua"], "isopod");
    let redirected = isopod.get_json("/redirect").await;
    assert_eq!(redirected["redirected"], true);
    assert_eq!(redirected["path"], "/json");
}

/// The incoming request is a full `Request`: it can be copied, cloned and
/// forwarded. Its headers go along, and so does its redirect mode, which is
/// "manual" as on workerd (a 302 comes back as it is), unless the copy asks
/// to follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incoming_request_can_be_copied_cloned_and_forwarded() {
    let isopod = proxy_to(start_upstream().await);
    let request = http::Request::get("/forward")
        .header("host", "localhost")
        .header("user-agent", "forwarded-agent")
        .header("x-probe", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = crate::support::collect(send(isopod.addr, request).await).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["copy"], "http://localhost/forward");
    assert_eq!(json["clone"], "http://localhost/forward");
    assert_eq!(json["probe"], "1");
    assert_eq!(json["status"], 302);
    assert_eq!(json["location"], "/json");
    assert_eq!(json["redirected"], true);
    assert_eq!(json["path"], "/json");
    assert_eq!(json["body"]["ua"], "forwarded-agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_streams_responses_and_request_bodies() {
    let isopod = proxy_to(start_upstream().await);

    // Download: the upstream's first part reaches the client long before its last.
    let request = http::Request::get("/slow")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let (text, arrivals) = timed_chunks(send(isopod.addr, request).await, started).await;
    assert_eq!(text, "part0;part1;part2;");
    assert!(
        arrivals[0] + Duration::from_millis(600) < *arrivals.last().unwrap(),
        "{arrivals:?}"
    );

    // Upload: the client's body is streamed through to the upstream.
    let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(2);
    let request = http::Request::post("/upload")
        .header("host", "localhost")
        .body(StreamBody::new(futures::StreamExt::map(rx, |b| {
            Ok::<_, Infallible>(Frame::data(b))
        })))
        .unwrap();
    let sender = tokio::spawn(async move {
        use futures::SinkExt;
        for _ in 0..8 {
            tx.send(Bytes::from(vec![b'z'; 64 * 1024])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let (status, _, body) = crate::support::collect(send(isopod.addr, request).await).await;
    sender.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "received 524288 bytes"));
}
