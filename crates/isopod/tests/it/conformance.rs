//! Conformance beyond the probe: web-platform behaviour that deno's
//! extensions give (tests/fixtures/conformance.js, whose every answer deno
//! 2.9.6 gives too, but where a case says isopod follows the spec past
//! deno), and the Workers behaviour public apps rely on
//! (`request.cf`, `FetchEvent.request` read through a derived object,
//! `reportError` that never ends the isolate), each as workerd has it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{fixture, raw, temp_bundle, Isopod};

#[tokio::test]
async fn web_platform_cases_answer_as_deno_does() {
    let isopod = Isopod::start(&fixture("conformance.js"), &["--limit", "cpu_ms=5000"]);
    let got = isopod.get_json("/").await;
    // Recorded from `deno serve` 2.9.6 on the same bundle.
    let expected = json!({
        "errorClasses": [
            ["DOMException", "InvalidCharacterError"], true, 5,
            ["QuotaExceededError", "QuotaExceededError"], true, true
        ],
        "messageChannel": [true, "hi", [1, 2, 3], 0, true],
        "structuredClone": [0, 8, ["DOMException", "DataCloneError"]],
        "encodeIntoDetached": ["returned", { "read": 0, "written": 0 }],
        "fileReader": [["héllo", 2, ["load", true]], 6, "data:text/plain;base64,aMOpbGxv"],
        "reportedExceptions": [
            [true, "Uncaught Error: from a microtask", "from a microtask"],
            [true, "Uncaught Error: reported", "reported"]
        ],
        // deno refuses the string (not an object); the Streams spec takes it.
        "alreadyAbortedFetch": ["rejected AbortError", "next microtask"],
        "readableStreamFrom": [["a", "b", 1, 2, "x", "😀"], 1, "from"],
    });
    let expected = expected.as_object().unwrap();
    for (case, want) in expected {
        assert_eq!(got.get(case), Some(want), "case {case}; all: {got:#}");
    }
    assert_eq!(got.as_object().unwrap().len(), expected.len(), "{got:#}");
}

#[tokio::test]
async fn an_unhandled_reported_error_is_logged_and_the_isolate_serves_on() {
    // deno's own reportError ends the isolate when no listener handles the
    // error; the module-scope counter shows the same instance answering.
    let bundle = temp_bundle(
        "report.js",
        "let served = 0;\n\
         export default { fetch() {\n\
           served++;\n\
           reportError(new Error('nobody listens'));\n\
           queueMicrotask(() => { throw new Error('from a microtask'); });\n\
           return new Response(String(served));\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    assert_eq!(isopod.get("/").await.2, "1");
    assert_eq!(isopod.get("/").await.2, "2");
    for text in ["nobody listens", "from a microtask"] {
        isopod.wait_for_log(text, |record| {
            record["message"] == "uncaught exception"
                && record["error"]
                    .as_str()
                    .is_some_and(|error| error.contains(text))
        });
    }
}

#[tokio::test]
async fn an_incoming_request_has_cf_and_a_made_one_has_none() {
    let bundle = temp_bundle(
        "cf.js",
        "export default { fetch(request) {\n\
           return Response.json({ cf: request.cf, same: request.cf === request.cf,\n\
             made: new Request('https://example.com/').cf ?? null,\n\
             cloned: request.clone().cf === request.cf,\n\
             keys: Object.keys(request.cf) });\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let answer = raw(
        &isopod,
        "GET /x HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: gzip, br\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.contains(
            r#"{"cf":{"httpProtocol":"HTTP/1.1","clientAcceptEncoding":"gzip, br"},"same":true,"made":null,"cloned":true,"keys":["httpProtocol","clientAcceptEncoding"]}"#
        ),
        "{answer}"
    );
    // HTTP/1.0 goes through hyper; no Accept-Encoding, no such key.
    let answer = raw(&isopod, "GET /x HTTP/1.0\r\nHost: localhost\r\n\r\n").await;
    assert!(
        answer.contains(r#"{"cf":{"httpProtocol":"HTTP/1.0"},"same":true"#),
        "{answer}"
    );
}

#[tokio::test]
async fn a_fetch_event_read_through_a_derived_object_has_its_request() {
    // GraphQL Yoga passes the event on as its server context and reads
    // `request` from objects made from it; workerd defines `request` as an
    // own property of the event.
    let bundle = temp_bundle(
        "derived.js",
        "addEventListener('fetch', (event) => {\n\
           const spread = { ...event };\n\
           const inherited = Object.create(event);\n\
           const own = Object.getOwnPropertyDescriptor(event, 'request');\n\
           event.respondWith(Response.json([spread.request.url, inherited.request.url,\n\
             own.writable, own.enumerable, event.request === inherited.request]));\n\
         });\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    assert_eq!(
        isopod.get_json("/e").await,
        json!([
            "http://localhost/e",
            "http://localhost/e",
            false,
            true,
            true
        ])
    );
}

#[tokio::test]
async fn a_service_worker_sees_its_variables_as_globals_and_is_called_as_workerd_calls_it() {
    let bundle = temp_bundle(
        "sw-globals.js",
        "const atLoad = typeof GREETING === 'undefined' ? null : GREETING;\n\
         addEventListener('fetch', function (event) {\n\
           event.respondWith(Response.json([atLoad, GREETING, this === globalThis,\n\
             event.isTrusted, event.request.redirect]));\n\
         });\n",
    );
    let isopod = Isopod::start(&bundle, &["--var", "GREETING=hi"]);
    assert_eq!(
        isopod.get_json("/").await,
        json!(["hi", "hi", true, true, "manual"])
    );
}

#[tokio::test]
async fn a_passed_on_request_hands_redirects_back_to_the_client() {
    // `fetch(url, request)` copies the incoming request's redirect mode,
    // which is "manual" on Workers: a proxy passes a 302 on. The origin is
    // a second isopod (an app cannot fetch its own process's listeners).
    let origin = temp_bundle(
        "origin.js",
        "export default { fetch(request) {\n\
           const url = new URL(request.url);\n\
           return url.pathname === '/moved'\n\
             ? Response.redirect(url.origin + '/final', 302) : new Response('final');\n\
         } };\n",
    );
    let origin = Isopod::start(&origin, &[]);
    let proxy = temp_bundle(
        "passon.js",
        "export default { async fetch(request, env) {\n\
           const answer = await fetch(`http://${env.ORIGIN}/moved`, request);\n\
           return new Response(`${request.redirect} ${answer.status} ${answer.headers.get('location')}`);\n\
         } };\n",
    );
    let origin_host = origin.addr.to_string();
    let proxy = Isopod::start(
        &proxy,
        &[
            "--allow-net",
            "127.0.0.1",
            "--var",
            &format!("ORIGIN={origin_host}"),
        ],
    );
    let (status, _, body) = proxy.get("/start").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, format!("manual 302 http://{origin_host}/final"));
}

#[tokio::test]
async fn content_encoding_gzip_compresses_the_body_unless_it_is_encoded_already() {
    let bundle = temp_bundle(
        "encoding.js",
        "const text = 'hello '.repeat(100);\n\
         export default { async fetch(request) {\n\
           const path = new URL(request.url).pathname;\n\
           if (path === '/auto') return new Response(text, { headers: { 'content-encoding': 'gzip' } });\n\
           if (path === '/stream') return new Response(new Blob([text]).stream(), { headers: { 'content-encoding': 'gzip', 'content-length': '600' } });\n\
           const gzipped = await new Response(new Blob([text]).stream().pipeThrough(new CompressionStream('gzip'))).arrayBuffer();\n\
           return new Response(gzipped, { encodeBody: 'manual', headers: { 'content-encoding': 'gzip' } });\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    for path in ["/auto", "/stream", "/manual"] {
        let request = http::Request::get(path)
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = crate::support::send(isopod.addr, request).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-encoding"], "gzip", "{path}");
        assert!(
            response.headers().get("content-length").is_none() || path == "/manual",
            "{path}: a compressed body's length is not the handler's"
        );
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body[..2], [0x1f, 0x8b], "{path}: a gzip stream");
        let text = gunzip(&body);
        assert_eq!(text, "hello ".repeat(100), "{path}: decoded once");
    }
}

/// `gzip -dc` of `bytes` (the test needs no compression crate).
fn gunzip(bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip runs");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "gzip -dc accepted the body"
    );
    text
}

#[tokio::test]
async fn a_response_with_status_101_is_refused_with_the_reason() {
    let bundle = temp_bundle(
        "status101.js",
        "export default { fetch() { return new Response(null, { status: 101 }); } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let (status, _, body) = isopod.get("/").await;
    assert_eq!(status, 500, "{body}");
    isopod.wait_for_log("the refusal", |record| {
        record.to_string().contains("status 101")
    });
}

/// Every error class name that the linked deno crates can raise from Rust
/// has a builder in `04_error_classes.js` (or is one deno_core registers):
/// otherwise it would reach JavaScript as a plain TypeError. Reads the
/// crates' sources where cargo keeps them.
#[test]
fn every_op_error_class_has_a_builder() {
    let tables = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../isopod-api/js/04_error_classes.js"),
    )
    .unwrap();
    let mut known: BTreeSet<String> = [
        "Error",
        "TypeError",
        "RangeError",
        "ReferenceError",
        "SyntaxError",
        "URIError",
        "BadResource",
        "Interrupted",
        "NotCapable",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let dom_names = quoted_entries(&tables, "DOM_EXCEPTION_NAMES");
    let deno_names = quoted_entries(&tables, "DENO_ERROR_NAMES");
    assert!(
        dom_names.len() >= 30 && deno_names.len() >= 20,
        "tables parsed"
    );
    known.extend(dom_names.iter().map(|name| format!("DOMException{name}")));
    known.extend(deno_names);

    let sources = deno_crate_dirs();
    assert!(
        sources
            .iter()
            .any(|dir| dir.to_string_lossy().contains("deno_crypto-")),
        "deno_crypto's sources found: {sources:?}"
    );
    let mut missing = BTreeSet::new();
    let mut seen = 0;
    for dir in &sources {
        for class in raised_classes(dir) {
            seen += 1;
            if !known.contains(&class) {
                missing.insert(class);
            }
        }
    }
    assert!(seen > 20, "class names found in the deno sources: {seen}");
    assert!(missing.is_empty(), "classes without a builder: {missing:?}");
}

/// The string literals of the JavaScript array `const NAME = [...]`.
fn quoted_entries(source: &str, name: &str) -> Vec<String> {
    let start = source
        .find(&format!("const {name} = ["))
        .unwrap_or_else(|| panic!("{name} in 04_error_classes.js"));
    let body = &source[start..];
    let body = &body[..body.find("];").expect("the array ends")];
    body.split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// The source directories of the deno crates in the build, from
/// `cargo metadata`.
fn deno_crate_dirs() -> Vec<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        // This platform's graph only: the packages of others (Windows
        // crates) are not downloaded, and the test stays offline.
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .args([
            "--filter-platform",
            &format!("{}-unknown-linux-gnu", std::env::consts::ARCH),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|package| {
            package["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("deno_"))
        })
        .filter_map(|package| {
            Path::new(package["manifest_path"].as_str()?)
                .parent()
                .map(Path::to_path_buf)
        })
        .collect()
}

/// The class names a crate's Rust sources give errors: `#[class("X")]` and
/// `JsErrorBox::new("X", …)`.
fn raised_classes(dir: &Path) -> Vec<String> {
    let mut classes = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("tests") && !path.ends_with("benches") {
                    pending.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for marker in ["#[class(\"", "JsErrorBox::new(\""] {
                classes.extend(
                    text.split(marker)
                        .skip(1)
                        .filter_map(|rest| rest.split('"').next().map(String::from)),
                );
            }
            // `JsErrorBox::new(` with the class on the next line.
            classes.extend(text.split("JsErrorBox::new(\n").skip(1).filter_map(|rest| {
                let rest = rest.trim_start();
                let rest = rest.strip_prefix('"')?;
                rest.split('"').next().map(String::from)
            }));
        }
    }
    classes
}
