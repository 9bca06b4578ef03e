//! Bodies stream in both directions, and a client that goes away cancels
//! what was producing for it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{send, temp_bundle, timed_chunks, Isopod};

/// POSTs a JSON body and parses the JSON answer.
pub(crate) async fn post_json(addr: SocketAddr, path: &str, json: &str) -> serde_json::Value {
    let request = http::Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap();
    let (status, _, body) = crate::support::collect(send(addr, request).await).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn response_streams_chunk_by_chunk() {
    let bundle = temp_bundle(
        "stream_out.js",
        "export default { fetch() {\n\
           let n = 0;\n\
           return new Response(new ReadableStream({ async pull(c) {\n\
             if (n > 0) await new Promise((r) => setTimeout(r, 400));\n\
             if (n++ < 3) c.enqueue(new TextEncoder().encode(`chunk${n};`)); else c.close();\n\
           } }), { headers: { 'content-type': 'text/plain' } });\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let request = http::Request::get("/")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let (text, arrivals) = timed_chunks(send(isopod.addr, request).await, started).await;
    assert_eq!(text, "chunk1;chunk2;chunk3;");
    // The producer needs ~1.2 s; the first chunk must not wait for it.
    let first = arrivals[0];
    let last = *arrivals.last().unwrap();
    assert!(
        last >= Duration::from_millis(700),
        "the producer sleeps between chunks: {arrivals:?}"
    );
    assert!(
        first + Duration::from_millis(600) < last,
        "first chunk arrived only at the end: {arrivals:?}"
    );
}

#[tokio::test]
async fn request_body_streams_to_the_handler() {
    // The handler answers as soon as it has read the first chunk; the client
    // sends the rest only after it has seen that answer.
    let bundle = temp_bundle(
        "stream_in.js",
        "export default { async fetch(request) {\n\
           const reader = request.body.getReader();\n\
           const first = await reader.read();\n\
           const text = new TextDecoder().decode(first.value);\n\
           return new Response(new ReadableStream({\n\
             start(c) { c.enqueue(new TextEncoder().encode(`first:${text};`)); },\n\
             async pull(c) {\n\
               let total = first.value.length;\n\
               for (;;) { const { done, value } = await reader.read(); if (done) break; total += value.length; }\n\
               c.enqueue(new TextEncoder().encode(`total:${total}`)); c.close();\n\
             },\n\
           }));\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(4);
    let body = StreamBody::new(rx.map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))));
    let request = http::Request::post("/upload")
        .header("host", "localhost")
        .body(body)
        .unwrap();
    tx.send(Bytes::from_static(b"hello")).await.unwrap();
    let response = send(isopod.addr, request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first:hello;");
    tx.send(Bytes::from(vec![b'x'; 100_000])).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"total:100005");
}

#[tokio::test]
async fn client_disconnect_cancels_the_stream_and_aborts_the_signal() {
    let bundle = temp_bundle(
        "disconnect.js",
        "export default { async fetch(request) {\n\
           const path = new URL(request.url).pathname;\n\
           request.signal.addEventListener('abort', () => console.log(`signal aborted ${path}`));\n\
           if (path === '/hang') { console.log('hanging'); await new Promise(() => {}); }\n\
           return new Response(new ReadableStream({\n\
             async pull(c) { await new Promise((r) => setTimeout(r, 20)); c.enqueue(new Uint8Array(1024)); },\n\
             cancel(reason) { console.log(`stream cancelled ${path}`); },\n\
           }));\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);

    // A streaming response whose client reads a little, then goes away.
    let mut stream = tokio::net::TcpStream::connect(isopod.addr).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(stream);
    isopod.wait_for_log("stream cancellation", |r| {
        r["message"] == "stream cancelled /stream"
    });

    // A handler still waiting when its client goes away.
    let mut stream = tokio::net::TcpStream::connect(isopod.addr).await.unwrap();
    stream
        .write_all(b"GET /hang HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Gone once the handler runs (its log record says so).
    isopod.wait_for_log("the handler's start", |r| r["message"] == "hanging");
    drop(stream);
    let record = isopod.wait_for_log("request.signal abort", |r| {
        r["message"] == "signal aborted /hang"
    });
    assert_eq!(record["request"], "GET /hang");
}
