//! Version snapshots: instances from a snapshot answer as instances loaded
//! from source do, every case a snapshot must not hold is refused, and
//! randomness is not shared between instances of one snapshot.

use super::make::{make_on_this_thread, Process};
use super::snapshotter::request_for;
use super::{NotSnapshottable, VersionSnapshot};
use crate::instance::test_support::{body_text, on_local_thread, request};
use crate::{AppConfig, Bundle, Instance, SnapshotPolicy};

/// The snapshot of `source` for `app`, made as the server makes it (on a
/// thread with no isolate, layered on the API snapshot, mended).
fn snapshot_of(bundle: &Bundle, app: &AppConfig) -> Result<VersionSnapshot, NotSnapshottable> {
    crate::init_v8();
    let request = request_for(bundle, app);
    std::thread::spawn(move || make_on_this_thread(request, Process::Serving))
        .join()
        .expect("the snapshot thread did not panic")
        .map(|bytes| VersionSnapshot::from_bytes(bytes.into()))
}

fn refusal(source: &str) -> Vec<String> {
    let bundle = Bundle::from_source("refused.js", source);
    match snapshot_of(&bundle, &AppConfig::new("refused")) {
        Err(NotSnapshottable::Tainted(reasons)) => reasons,
        other => panic!("expected a refusal for {source:?}, got {other:?}"),
    }
}

/// Answers of `paths` from an instance of `bundle` loaded from source and
/// from one started from the snapshot.
fn both_ways(bundle: &Bundle, app: &AppConfig, paths: &'static [&'static str]) -> [Vec<String>; 2] {
    let snapshot = snapshot_of(bundle, app).expect("the bundle snapshots");
    let (bundle, app) = (bundle.clone(), app.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    on_local_thread(move || async move {
        let mut from_source = Instance::blank(&app).unwrap();
        from_source.load(&bundle, &app).await.unwrap();
        let from_snapshot = Instance::from_snapshot(&snapshot, &bundle, &app).unwrap();
        let mut answers = Vec::new();
        for instance in [from_source, from_snapshot] {
            let handle = instance.spawn();
            let mut texts = Vec::new();
            for path in paths {
                let response = handle
                    .dispatch(request(&format!("http://x{path}")))
                    .await
                    .unwrap_or_else(|e| panic!("instance {} on {path}: {e:?}", answers.len()));
                texts.push(body_text(response).await);
            }
            answers.push(texts);
        }
        tx.send(answers).unwrap();
    });
    let mut answers = rx.recv().unwrap();
    let second = answers.pop().unwrap();
    [answers.pop().unwrap(), second]
}

#[test]
fn a_module_answers_the_same_from_its_snapshot_as_from_source() {
    let bundle = Bundle::from_source(
        "same.js",
        r#"
        const table = new Map(Array.from({ length: 100 }, (_, i) => ["k" + i, i * i]));
        const encoded = new TextEncoder().encode("héllo");
        const pattern = new URLPattern({ pathname: "/items/:id" });
        let served = 0;
        export default {
          async fetch(request, env) {
            const url = new URL(request.url);
            const match = pattern.exec(url);
            const digest = await crypto.subtle.digest("SHA-256", encoded);
            return Response.json({
              id: match?.pathname.groups.id ?? null,
              square: table.get("k12"),
              bytes: encoded.length,
              digest: new Uint8Array(digest)[0],
              greeting: env.GREETING,
              served: ++served,
              eval: (() => { try { eval("1"); return "allowed"; } catch { return "refused"; } })(),
              deno: typeof Deno,
            });
          },
        };"#,
    );
    let mut app = AppConfig::new("same");
    app.vars = vec![("GREETING".into(), "hi".into())];
    let [source, snapshot] = both_ways(&bundle, &app, &["/items/7", "/other"]);
    assert_eq!(source, snapshot);
    assert!(source[0].contains(r#""id":"7""#), "{}", source[0]);
    assert!(source[0].contains(r#""eval":"refused""#), "{}", source[0]);
    assert!(source[0].contains(r#""deno":"undefined""#), "{}", source[0]);
}

#[test]
fn a_service_worker_script_answers_the_same_with_its_globals() {
    let bundle = Bundle::from_source(
        "sw.js",
        "const prefix = GREETING + ', ';\
         addEventListener('fetch', (event) => event.respondWith(\
           new Response(prefix + new URL(event.request.url).pathname)));",
    );
    let mut app = AppConfig::new("sw");
    app.vars = vec![("GREETING".into(), "hello".into())];
    let [source, snapshot] = both_ways(&bundle, &app, &["/a"]);
    assert_eq!(source, snapshot);
    assert_eq!(snapshot, ["hello, /a"]);
}

#[test]
fn what_a_snapshot_must_not_hold_is_refused() {
    let handler = "export default { fetch() { return new Response('x'); } };";
    for (source, reason) in [
        (
            format!("{handler} setTimeout(() => {{}}, 60000);"),
            "work still pending",
        ),
        (
            format!("{handler} const r = Math.random();"),
            "Math.random()",
        ),
        (
            format!("{handler} const id = crypto.randomUUID();"),
            "crypto.randomUUID()",
        ),
        (
            format!("{handler} crypto.getRandomValues(new Uint8Array(8));"),
            "crypto.getRandomValues()",
        ),
        (
            format!("{handler} const started = Date.now();"),
            "the clock",
        ),
        (
            format!("{handler} await fetch('https://example.com/');"),
            "fetch()",
        ),
        (
            format!("{handler} const blob = new Blob(['x']);"),
            "a Blob or File",
        ),
        (
            format!("{handler} const wasm = typeof WebAssembly;"),
            "WebAssembly",
        ),
        (
            format!("{handler} await new Promise(() => {{}});"),
            "a top-level await that never settles",
        ),
    ] {
        let reasons = refusal(&source);
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "{source}: {reasons:?}"
        );
    }
}

#[test]
fn a_bundle_that_throws_at_top_level_is_refused_with_its_error() {
    let bundle = Bundle::from_source("throws.js", "throw new Error('boom at top level');");
    match snapshot_of(&bundle, &AppConfig::new("throws")) {
        Err(NotSnapshottable::Failed(message)) => assert!(message.contains("boom"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn instances_of_one_snapshot_draw_their_own_random_values() {
    let bundle = Bundle::from_source(
        "random.js",
        "const salt = Math.random();\
         export default { fetch() { return Response.json({\
           salt, random: Math.random(), uuid: crypto.randomUUID() }); } };",
    );
    let mut app = AppConfig::new("random");
    // Top-level Math.random() is refused unless the app shares it.
    assert!(refusal(bundle.source())
        .iter()
        .any(|r| r.contains("Math.random()")));
    app.snapshot = SnapshotPolicy::ShareRandom;
    let snapshot = snapshot_of(&bundle, &app).expect("shared randomness snapshots");
    let (tx, rx) = std::sync::mpsc::channel();
    on_local_thread(move || async move {
        let mut answers = Vec::new();
        for _ in 0..2 {
            let handle = Instance::from_snapshot(&snapshot, &bundle, &app)
                .unwrap()
                .spawn();
            let response = handle.dispatch(request("http://x/")).await.unwrap();
            answers.push(body_text(response).await);
        }
        tx.send(answers).unwrap();
    });
    let answers: Vec<serde_json::Value> = rx
        .recv()
        .unwrap()
        .iter()
        .map(|a| serde_json::from_str(a).unwrap())
        .collect();
    assert_eq!(
        answers[0]["salt"], answers[1]["salt"],
        "drawn once, at the snapshot"
    );
    assert_ne!(answers[0]["random"], answers[1]["random"]);
    assert_ne!(answers[0]["uuid"], answers[1]["uuid"]);
}

#[test]
fn the_api_probe_answers_the_same_from_its_snapshot() {
    // The integration suite's API probe (tests/it/probe.rs compares it with
    // workerd), one case per request: every case that answers from source
    // answers the same from the snapshot.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../isopod/tests/fixtures/probe.js"
    );
    let source = std::fs::read_to_string(path).unwrap();
    let cases: Vec<String> = source
        .lines()
        .filter_map(|line| {
            let name = line.strip_prefix("  ")?.trim_start_matches("async ");
            let name = name.strip_suffix("() {")?;
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| name.to_string())
        })
        .collect();
    assert!(cases.len() > 20, "{cases:?}");
    let bundle = Bundle::from_source("probe.js", source);
    let mut app = AppConfig::new("probe");
    app.limits.cpu_ms = 1_000;
    let snapshot = snapshot_of(&bundle, &app).expect("the probe snapshots");
    let (tx, rx) = std::sync::mpsc::channel();
    on_local_thread(move || async move {
        let mut compared = 0;
        for case in cases {
            let url = format!("http://x/?case={case}");
            // A fresh pair per case: a case that a limit stops takes its
            // instance with it.
            let mut from_source = Instance::blank(&app).unwrap();
            from_source.load(&bundle, &app).await.unwrap();
            let Ok(response) = from_source.spawn().dispatch(request(&url)).await else {
                continue;
            };
            let expected = body_text(response).await;
            let from_snapshot = Instance::from_snapshot(&snapshot, &bundle, &app).unwrap();
            let response = from_snapshot.spawn().dispatch(request(&url)).await.unwrap();
            assert_eq!(body_text(response).await, expected, "case {case}");
            compared += 1;
        }
        tx.send(compared).unwrap();
    });
    let compared = rx.recv().unwrap();
    assert!(compared > 20, "only {compared} cases answered");
}
