//! The HTTP semantics a Workers handler relies on.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{raw, read_until, temp_bundle, Isopod};

fn echo_bundle() -> std::path::PathBuf {
    temp_bundle(
        "echo.js",
        "export default { async fetch(request) {\n\
           const seen = {}; for (const [k, v] of request.headers) seen[k] = v;\n\
           const headers = new Headers({ 'x-url': request.url, 'keep-alive': 'timeout=99', 'connection': 'x-secret', 'x-secret': 'no' });\n\
           headers.append('set-cookie', 'a=1; Path=/');\n\
           headers.append('set-cookie', 'b=2; Path=/');\n\
           return new Response(JSON.stringify({ url: request.url, method: request.method, headers: seen, body: await request.text() }) + '\\n', { headers });\n\
         } };\n",
    )
}

#[tokio::test]
async fn url_is_absolute_from_the_host_header() {
    let isopod = Isopod::start(&echo_bundle(), &[]);
    let text = raw(
        &isopod,
        "GET /p/a?q=1 HTTP/1.1\r\nhost: app.example:9000\r\n\r\n",
    )
    .await;
    assert!(
        text.contains(r#""url":"http://app.example:9000/p/a?q=1""#),
        "{text}"
    );
}

#[tokio::test]
async fn a_request_without_host_is_refused_with_a_reason() {
    let isopod = Isopod::start(&echo_bundle(), &[]);
    let text = raw(&isopod, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        text.starts_with("HTTP/1.0 400") || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    assert!(text.contains("no Host header"), "{text}");
}

#[tokio::test]
async fn head_gets_headers_and_no_body() {
    let isopod = Isopod::start(&echo_bundle(), &[]);
    let mut stream = TcpStream::connect(isopod.addr).await.unwrap();
    stream
        .write_all(b"HEAD / HTTP/1.1\r\nhost: localhost\r\n\r\nGET /second HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Both responses on one connection: the HEAD one carries no body, so the
    // second response's status line directly follows its headers.
    let text = read_until(&mut stream, |t| {
        t.matches("HTTP/1.1 200").count() == 2 && t.ends_with("}\n")
    })
    .await;
    let (head, second) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("content-length:"), "{head}");
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "HEAD response had a body: {text}"
    );
    assert!(second.contains(r#""method":"GET""#));
}

#[tokio::test]
async fn set_cookie_lines_stay_separate_and_hop_by_hop_headers_do_not_pass() {
    let isopod = Isopod::start(&echo_bundle(), &[]);
    let text = raw(
        &isopod,
        "GET / HTTP/1.1\r\nhost: localhost\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\nte: trailers\r\nx-kept: yes\r\n\r\n",
    )
    .await;
    let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    assert!(
        head.contains("set-cookie: a=1; path=/\r\nset-cookie: b=2; path=/"),
        "{head}"
    );
    assert!(!head.contains("keep-alive: timeout=99"), "{head}");
    assert!(!head.contains("x-secret"), "{head}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    assert!(body.contains(r#""x-kept":"yes""#), "{body}");
    for hop in ["x-hop", "keep-alive", "te", "connection"] {
        assert!(
            !body.contains(&format!("\"{hop}\"")),
            "{hop} reached the handler: {body}"
        );
    }
}

/// Responses built from a string or bytes (deno_fetch's "serve fast" fields,
/// sent in one op) keep their status, content type and body, a body is
/// sent once, and every other response takes the header-list path.
#[tokio::test]
async fn static_responses_keep_their_type_and_a_body_is_sent_once() {
    let bundle = temp_bundle(
        "static.js",
        "const cached = new Response('cached');\n\
         export default { fetch(request) {\n\
           switch (new URL(request.url).pathname) {\n\
             case '/text': return new Response('plain text');\n\
             case '/json': return Response.json({ ok: true });\n\
             case '/typed': return new Response('{}', { headers: { 'Content-Type': 'application/json' } });\n\
             case '/bytes': return new Response(new Uint8Array([104, 105]));\n\
             case '/utf8': return new Response('h\\u00e9 \\u{1F980}');\n\
             case '/rope': return new Response(`rope ${request.method} \\u00e9`);\n\
             case '/lone': return new Response('a\\ud800b');\n\
             case '/type-fast': return new Response('t', { headers: { 'content-type': 'text/x; q=\\u00e9' } });\n\
             case '/type-list': return new Response('t', { headers: { 'content-type': 'text/x; q=\\u00e9', 'x-b': '2' } });\n\
             case '/status': return new Response('made', { status: 201, headers: { 'x-a': '1' } });\n\
             case '/cached': return cached;\n\
             case '/used': return new Response(cached.bodyUsed ? 'used' : 'unused');\n\
           }\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let content_type = |headers: &http::HeaderMap| {
        headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, headers, body) = isopod.get("/text").await;
    assert_eq!((status, body.as_str()), (200, "plain text"));
    assert_eq!(
        content_type(&headers).as_deref(),
        Some("text/plain;charset=UTF-8")
    );
    let (_, headers, body) = isopod.get("/json").await;
    assert_eq!(body, r#"{"ok":true}"#);
    assert_eq!(content_type(&headers).as_deref(), Some("application/json"));
    let (_, headers, _) = isopod.get("/typed").await;
    assert_eq!(content_type(&headers).as_deref(), Some("application/json"));
    let (_, headers, body) = isopod.get("/bytes").await;
    assert_eq!(body, "hi");
    assert_eq!(content_type(&headers), None);
    let (_, headers, body) = isopod.get("/utf8").await;
    assert_eq!(body, "h\u{e9} \u{1F980}");
    assert_eq!(headers.get("content-length").unwrap(), "8");
    // A template literal's result is a rope, not a flat string.
    assert_eq!(isopod.get("/rope").await.2, "rope GET \u{e9}");
    assert_eq!(isopod.get("/lone").await.2, "a\u{FFFD}b");
    // A header value is a ByteString: its Latin-1 bytes go out, whichever
    // path the response takes.
    for path in ["/type-fast", "/type-list"] {
        let (_, headers, _) = isopod.get(path).await;
        assert_eq!(
            headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/x; q=\xe9"[..]),
            "{path}"
        );
    }
    let (status, headers, body) = isopod.get("/status").await;
    assert_eq!((status, body.as_str()), (201, "made"));
    assert_eq!(headers.get("x-a").unwrap(), "1");
    assert_eq!(isopod.get("/used").await.2, "unused");
    let (status, _, body) = isopod.get("/cached").await;
    assert_eq!((status, body.as_str()), (200, "cached"));
    assert_eq!(isopod.get("/used").await.2, "used");
    let (status, _, _) = isopod.get("/cached").await;
    assert_eq!(status, 500, "a body was sent twice");
}

#[tokio::test]
async fn expect_100_continue() {
    let isopod = Isopod::start(&echo_bundle(), &[]);
    let mut stream = TcpStream::connect(isopod.addr).await.unwrap();
    stream
        .write_all(b"POST /up HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = read_until(&mut stream, |t| t.contains("\r\n\r\n")).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"hello").await.unwrap();
    let text = read_until(&mut stream, |t| t.ends_with("}\n")).await;
    assert!(
        text.contains("HTTP/1.1 200") && text.contains(r#""body":"hello""#),
        "{text}"
    );
}

/// Reads until the server closes the connection (or `limit` passes); what
/// came, and when the close came, counted from `since`.
async fn read_to_close(
    stream: &mut TcpStream,
    since: std::time::Instant,
    limit: std::time::Duration,
) -> (String, Option<std::time::Duration>) {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
    .await
    .ok();
    (text, closed)
}

/// Slow-client protection: a connection that sends no complete request head
/// within 10 s of becoming idle is closed, whether it sent part of a head or
/// sits idle after an answered request; a response that takes longer than
/// that to stream keeps its connection to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed_but_long_responses_are_not() {
    use std::time::{Duration, Instant};
    const CHUNKS: usize = 13;
    let bundle = temp_bundle(
        "drip.js",
        &format!(
            "export default {{ fetch(request) {{\n\
               if (new URL(request.url).pathname !== '/drip') return new Response('quick');\n\
               let sent = 0;\n\
               const body = new ReadableStream({{ async pull(controller) {{\n\
                 await new Promise((resolve) => setTimeout(resolve, 1000));\n\
                 controller.enqueue(new TextEncoder().encode('tick;'));\n\
                 if (++sent === {CHUNKS}) controller.close();\n\
               }} }});\n\
               return new Response(body);\n\
             }} }};\n"
        ),
    );
    let isopod = Isopod::start(&bundle, &[]);
    let limit = Duration::from_secs(25);
    let started = Instant::now();
    let send_then_read = |request: &'static [u8]| async move {
        let mut stream = TcpStream::connect(isopod.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        read_to_close(&mut stream, started, limit).await
    };
    let partial_head = send_then_read(b"GET / HTTP/1.1\r\nhost: loc");
    let idle_keep_alive = send_then_read(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n");
    let long_stream =
        send_then_read(b"GET /drip HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    let ((partial, partial_closed), (idle, idle_closed), (dripped, drip_closed)) =
        tokio::join!(partial_head, idle_keep_alive, long_stream);

    let in_window = |closed: Option<Duration>| {
        closed.is_some_and(|at| at >= Duration::from_secs(9) && at < Duration::from_secs(16))
    };
    assert!(partial.is_empty(), "no answer to half a head: {partial}");
    assert!(
        in_window(partial_closed),
        "partial head closed at {partial_closed:?}"
    );
    assert!(
        idle.starts_with("HTTP/1.1 200") && idle.ends_with("quick"),
        "{idle}"
    );
    assert!(
        in_window(idle_closed),
        "idle connection closed at {idle_closed:?}"
    );
    assert_eq!(dripped.matches("tick;").count(), CHUNKS, "{dripped}");
    assert!(
        dripped.ends_with("0\r\n\r\n"),
        "the stream ended cleanly: {dripped}"
    );
    assert!(
        drip_closed.is_some_and(|at| at >= Duration::from_secs(CHUNKS as u64)),
        "{drip_closed:?}"
    );
}

/// One connection, pipelined: a plain GET (isopod's own HTTP/1.1 path), a
/// POST with a body (handed to hyper, which serves the connection from
/// then on), another GET, then `connection: close`. Every request is
/// answered, in order, and the two GETs' heads are the same line for line
/// (but the date and the URL): a client cannot tell which path served it.
#[tokio::test]
async fn a_connection_handed_to_hyper_mid_way_keeps_its_order_and_its_framing() {
    let isopod = Isopod::start(&echo_bundle(), &[]);
    let mut stream = TcpStream::connect(isopod.addr).await.unwrap();
    stream
        .write_all(
            b"GET /one HTTP/1.1\r\nhost: localhost\r\n\r\n\
              POST /two HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3\r\n\r\nabc\
              GET /three HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let (text, closed) = read_to_close(
        &mut stream,
        std::time::Instant::now(),
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(closed.is_some(), "closed after `connection: close`: {text}");
    let responses: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 3, "{text}");
    let bodies: Vec<serde_json::Value> = responses
        .iter()
        .map(|response| {
            let (_, body) = response.split_once("\r\n\r\n").unwrap();
            serde_json::from_str(body.trim()).unwrap()
        })
        .collect();
    assert_eq!(bodies[0]["url"], "http://localhost/one");
    assert_eq!(
        (&bodies[1]["method"], &bodies[1]["body"]),
        (&"POST".into(), &"abc".into())
    );
    assert_eq!(bodies[2]["url"], "http://localhost/three");
    let head_lines = |response: &str| -> Vec<String> {
        let (head, _) = response.split_once("\r\n\r\n").unwrap();
        head.lines()
            .map(|line| match line.split_once(": ") {
                Some(("date", _)) => "date: (now)".to_string(),
                Some(("x-url", _)) => "x-url: (the URL)".to_string(),
                Some(("x-request-id", _)) => "x-request-id: (an id)".to_string(),
                Some(("content-length", _)) => "content-length: (its length)".to_string(),
                _ => line.to_string(),
            })
            .collect()
    };
    let own = head_lines(responses[0]);
    let mut hypers = head_lines(responses[2]);
    // Only the last response says it closes the connection.
    let close = hypers.iter().position(|line| line == "connection: close");
    hypers.remove(close.expect("connection: close"));
    assert_eq!(own, hypers);
    assert!(own.contains(&"date: (now)".to_string()), "{own:?}");
}

/// Every request whose host is in doubt gets one answer, 400 with the
/// reason, whichever HTTP path reads it, and its connection is closed
/// (RFC 9112 §3.2): two `Host` lines, an absolute-form target naming
/// another host than `Host`, a tunnel or server-wide target, no `Host`.
#[tokio::test]
async fn requests_whose_host_is_in_doubt_are_refused_and_their_connection_closed() {
    let isopod = Isopod::serve(
        "[[apps]]\nname = \"a\"\nbundle = \"echo.js\"\n\n[[apps]]\nname = \"b\"\nbundle = \"echo.js\"\n",
        &[("echo.js", &std::fs::read_to_string(echo_bundle()).unwrap())],
    );
    for (request, reason) in [
        (
            "GET / HTTP/1.1\r\nHost: a.localhost\r\nHost: b.localhost\r\n\r\n",
            "more than one Host",
        ),
        (
            "GET http://b.localhost/x HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
            "does not name the request target's host",
        ),
        (
            "CONNECT b.localhost:443 HTTP/1.1\r\nHost: b.localhost:443\r\n\r\n",
            "opens no tunnels",
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
            "opens no tunnels",
        ),
        ("GET / HTTP/1.1\r\n\r\n", "no Host header"),
    ] {
        let mut stream = TcpStream::connect(isopod.addr).await.unwrap();
        // A second request behind the first: it must not be answered.
        let pipelined = format!("{request}GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n");
        stream.write_all(pipelined.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let (text, closed) =
            read_to_close(&mut stream, started, std::time::Duration::from_secs(10)).await;
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{request:?}: {text}"
        );
        assert!(text.contains(reason), "{request:?}: {text}");
        assert!(closed.is_some(), "{request:?}: the connection stays open");
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "{request:?}: {text}");
    }
    // An absolute-form target whose Host agrees is routed by it, and the
    // handler sees the same host.
    let text = raw(
        &isopod,
        "GET http://b.localhost/x HTTP/1.1\r\nHost: B.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""url":"http://b.localhost/x""#), "{text}");
    assert!(text.contains(r#""host":"B.localhost""#), "{text}");
}

/// isopod's own HTTP/1.1 path and hyper answer every request alike: the
/// same bytes (valid and malformed) go to a server reading with both (the
/// default) and to one reading with hyper alone (`--http1 hyper`), and the
/// answers, with what the handler saw, must be byte for byte the same but
/// for the date.
#[tokio::test]
async fn both_http1_stacks_answer_every_request_alike() {
    let own = Isopod::start(&echo_bundle(), &[]);
    let hyper = Isopod::start(&echo_bundle(), &["--http1", "hyper"]);
    let huge_value = "v".repeat(40 * 1024);
    let many_lines: String = (0..120).map(|i| format!("x-{i}: 1\r\n")).collect();
    let long_target = format!("/{}", "a".repeat(8000));
    let cases: Vec<(&str, String)> = vec![
        (
            "plain",
            "GET /a?b=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "head",
            "HEAD / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "pipelined",
            "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nDELETE /2 HTTP/1.1\r\nHost: h\r\n\r\n\
             GET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                .into(),
        ),
        (
            "pipelined, then a body",
            "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\n\
             Content-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                .into(),
        ),
        (
            "bare LF",
            "GET / HTTP/1.1\nHost: h\nConnection: close\n\n".into(),
        ),
        (
            "lower-case method",
            "get / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "obs-text in a value",
            "GET / HTTP/1.1\r\nHost: h\r\nX-Text: caf\u{e9}\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "content-length 0",
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "duplicate content-length",
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n"
                .into(),
        ),
        (
            "conflicting content-length",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".into(),
        ),
        (
            "folded header",
            "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n 2\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "space before colon",
            "GET / HTTP/1.1\r\nHost : h\r\n\r\n".into(),
        ),
        (
            "NUL in a value",
            "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n".into(),
        ),
        (
            "unknown version",
            "GET / HTTP/1.2\r\nHost: h\r\n\r\n".into(),
        ),
        ("HTTP/1.0", "GET / HTTP/1.0\r\nHost: h\r\n\r\n".into()),
        (
            "no Host",
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n".into(),
        ),
        (
            "absolute-form",
            "GET http://h/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".into(),
        ),
        (
            "CONNECT",
            "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n".into(),
        ),
        (
            "huge head",
            format!(
                "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {huge_value}\r\nConnection: close\r\n\r\n"
            ),
        ),
        (
            "too many lines",
            format!("GET / HTTP/1.1\r\nHost: h\r\n{many_lines}Connection: close\r\n\r\n"),
        ),
        (
            "long target",
            format!("GET {long_target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        ),
        (
            "garbage",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03\r\n\r\n".into(),
        ),
    ];
    let mut differences = Vec::new();
    for (label, request) in &cases {
        let own_answer = exchange(&own, request).await;
        let hyper_answer = exchange(&hyper, request).await;
        if own_answer != hyper_answer {
            differences.push(format!(
                "{label}:\n  own:   {own_answer:?}\n  hyper: {hyper_answer:?}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// Sends `request` on a fresh connection; everything the server answered
/// until it closed (every case ends in a close or a refusal), without
/// `date` lines, long runs of one byte shortened, and whether it closed.
async fn exchange(isopod: &Isopod, request: &str) -> String {
    let mut stream = TcpStream::connect(isopod.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let (text, closed) =
        read_to_close(&mut stream, started, std::time::Duration::from_secs(10)).await;
    let text: Vec<&str> = text
        .split("\r\n")
        // Each request's id is its own.
        .filter(|line| !line.starts_with("date: ") && !line.starts_with("x-request-id: "))
        .collect();
    let mut text = text.join("\r\n").replace(&"v".repeat(1000), "v…");
    // The handler echoes its request's id too.
    let key = "\"x-request-id\":\"";
    let mut from = 0;
    while let Some(at) = text[from..].find(key) {
        let start = from + at + key.len();
        let end = start + text[start..].find('"').unwrap_or(0);
        text.replace_range(start..end, "(an id)");
        from = start;
    }
    format!(
        "{text} [{}]",
        if closed.is_some() { "closed" } else { "open" }
    )
}
