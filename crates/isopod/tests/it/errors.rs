//! Errors a user can act on: refused bundles name file:line:column, failing
//! handlers answer 500 and log a source-mapped stack.

use crate::support::{fixture, run_to_exit, temp_bundle, Isopod};

#[test]
fn a_syntax_error_fails_at_start_with_file_line_column() {
    let bundle = temp_bundle(
        "syntax.js",
        "export default {\n  fetch() {\n    return new Response(;\n  }\n};\n",
    );
    let (ok, stderr) = run_to_exit(&["run", bundle.to_str().unwrap(), "--port", "0"]);
    assert!(!ok, "isopod accepted a broken bundle");
    assert!(stderr.contains("SyntaxError"), "{stderr}");
    assert!(
        stderr.contains("syntax.js:3:"),
        "no file:line:column in: {stderr}"
    );
}

#[test]
fn a_service_worker_syntax_error_is_reported_too() {
    let bundle = temp_bundle(
        "sw_syntax.js",
        "addEventListener('fetch', (e) => {\n  e.respondWith(new Response('x')\n});\n",
    );
    let (ok, stderr) = run_to_exit(&["run", bundle.to_str().unwrap(), "--port", "0"]);
    assert!(!ok);
    assert!(
        stderr.contains("SyntaxError") && stderr.contains("sw_syntax.js:2:"),
        "{stderr}"
    );
}

#[test]
fn a_bundle_that_imports_is_refused_naming_the_specifier() {
    let bundle = temp_bundle(
        "imports.js",
        "import { x } from 'left-pad';\nexport default { fetch() { return new Response(x); } };\n",
    );
    let (ok, stderr) = run_to_exit(&["run", bundle.to_str().unwrap(), "--port", "0"]);
    assert!(!ok);
    assert!(
        stderr.contains("\"left-pad\"") && stderr.contains("self-contained"),
        "{stderr}"
    );
}

#[test]
fn a_bundle_without_a_handler_is_refused() {
    let bundle = temp_bundle("nohandler.js", "export default { notFetch() {} };\n");
    let (ok, stderr) = run_to_exit(&["run", bundle.to_str().unwrap(), "--port", "0"]);
    assert!(!ok);
    assert!(
        stderr.contains("no fetch(request, env, ctx) method"),
        "{stderr}"
    );
}

#[test]
fn a_missing_bundle_is_a_one_line_error() {
    let (ok, stderr) = run_to_exit(&["run", "/no/such/bundle.js"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("bundle not found: /no/such/bundle.js"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_throwing_handler_answers_500_and_logs_the_source_mapped_stack() {
    let isopod = Isopod::start(&fixture("thrower.bundle.js"), &[]);
    let (status, _, body) = isopod.get("/boom").await;
    assert_eq!(status, 500);
    assert!(body.contains("threw an exception"), "{body}");
    let record = isopod.wait_for_log("the handler's error", |r| r["message"] == "handler threw");
    assert_eq!(record["request"], "GET /boom");
    assert_eq!(record["level"], "ERROR");
    let stack = record["error"].as_str().unwrap();
    assert!(stack.contains("Error: exploded: /boom"), "{stack}");
    // Line 4 of src/fail.js, not line 3 of the bundle.
    assert!(
        stack.contains("src/fail.js:4:9"),
        "stack not source-mapped: {stack}"
    );
    // The isolate keeps serving.
    assert_eq!(isopod.get("/again").await.0, 500);
}

#[tokio::test]
async fn a_handler_returning_no_response_answers_500_saying_so() {
    let bundle = temp_bundle(
        "not_response.js",
        "export default { fetch(request) { return new URL(request.url).pathname === '/str' ? 'text' : { ok: true }; } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let (status, _, body) = isopod.get("/obj").await;
    assert_eq!(status, 500);
    assert!(
        body.contains("returned an object (Object), not a Response"),
        "{body}"
    );
    let (status, _, body) = isopod.get("/str").await;
    assert_eq!(status, 500);
    assert!(body.contains("returned string, not a Response"), "{body}");
}

#[tokio::test]
async fn a_handler_throwing_synchronously_in_a_service_worker_answers_500() {
    let bundle = temp_bundle(
        "sw_throw.js",
        "addEventListener('fetch', () => { throw new TypeError('sync'); });\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    assert_eq!(isopod.get("/").await.0, 500);
    let record = isopod.wait_for_log("the error", |r| r["message"] == "handler threw");
    assert!(record["error"]
        .as_str()
        .unwrap()
        .contains("TypeError: sync"));
}
