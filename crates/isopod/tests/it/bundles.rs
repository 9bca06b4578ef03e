//! Both bundle styles, handler shapes, frameworks bundled by esbuild, `env`
//! and `ctx`.

use std::time::Duration;

use crate::support::{example_dist, temp_bundle, Isopod};

#[tokio::test]
async fn module_with_a_fetch_object() {
    let bundle = temp_bundle(
        "module.js",
        "export default { async fetch(request, env, ctx) {\n\
           return new Response(`${request.method} ${new URL(request.url).pathname} ${typeof ctx.waitUntil} ${typeof ctx.passThroughOnException}`);\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let (status, _, body) = isopod.get("/hello?x=1").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "GET /hello function function")
    );
}

#[tokio::test]
async fn minified_module_on_one_line() {
    // What `esbuild --minify` emits: no line starts with `export`.
    let bundle = temp_bundle(
        "minified.js",
        "var n=0,a={fetch(){return n++,new Response(`min ${n}`)}};export{a as default};",
    );
    let isopod = Isopod::start(&bundle, &["--threads", "1"]);
    assert_eq!(isopod.get("/").await.2, "min 1");
}

#[tokio::test]
async fn module_whose_default_export_is_a_class_instance() {
    let bundle = temp_bundle(
        "class.js",
        "class App { constructor() { this.greeting = 'from a method'; }\n\
           fetch(request) { return new Response(this.greeting); } }\n\
         export default new App();\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    assert_eq!(isopod.get("/").await.2, "from a method");
}

/// Top-level `await` before the first `export` makes a bundle that fails
/// to compile as a script on the `await`: it is still a module. The awaited
/// work here is WebCrypto, which runs on the instance's crypto thread
/// during start-up (the scratch isolate's at deploy, then the instance's).
#[tokio::test]
async fn module_with_top_level_await_before_its_exports() {
    let bundle = temp_bundle(
        "top-level-await.js",
        "const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode('x')));\n\
         export default { async fetch() {\n\
           const key = await crypto.subtle.generateKey({ name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);\n\
           const signature = await crypto.subtle.sign('HMAC', key, new Uint8Array(8));\n\
           return new Response(`${digest[0]} ${signature.byteLength}`);\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let (status, _, body) = isopod.get("/").await;
    assert_eq!((status, body.as_str()), (200, "45 32"));
}

#[tokio::test]
async fn service_worker_script() {
    let bundle = temp_bundle(
        "sw.js",
        "addEventListener('fetch', (event) => {\n\
           event.waitUntil(Promise.resolve());\n\
           event.respondWith((async () => new Response('sw ' + event.request.method + ' ' + (event instanceof FetchEvent)))());\n\
         });\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let (status, _, body) = isopod.get("/").await;
    assert_eq!((status, body.as_str()), (200, "sw GET true"));
}

#[tokio::test]
async fn env_carries_the_variables() {
    let bundle = temp_bundle(
        "env.js",
        "export default { fetch(request, env) { return Response.json(env); } };\n",
    );
    let isopod = Isopod::start(
        &bundle,
        &["--var", "A=1", "--var", "URL=https://x.test/?a=b"],
    );
    let env = isopod.get_json("/").await;
    assert_eq!(
        env,
        serde_json::json!({ "A": "1", "URL": "https://x.test/?a=b" })
    );
}

#[tokio::test]
async fn wait_until_work_runs_after_the_response() {
    // One thread, so every request reaches the same instance. The
    // waitUntil work cannot finish before `/release`, so `/work` answering
    // at all shows that its response did not wait for it.
    let bundle = temp_bundle(
        "wait_until.js",
        "let finished = 0;\n\
         let release;\n\
         export default { fetch(request, env, ctx) {\n\
           const path = new URL(request.url).pathname;\n\
           if (path === '/count') return new Response(String(finished));\n\
           if (path === '/release') { release(); return new Response('released'); }\n\
           ctx.waitUntil(new Promise((resolve) => { release = resolve; }).then(() => { finished++; console.log('background done'); }));\n\
           return new Response('sent');\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &["--threads", "1"]);
    let work = tokio::time::timeout(Duration::from_secs(30), isopod.get("/work"));
    assert_eq!(
        work.await.expect("the response waited for waitUntil").2,
        "sent"
    );
    assert_eq!(isopod.get("/count").await.2, "0");
    assert_eq!(isopod.get("/release").await.2, "released");
    let record = isopod.wait_for_log("waitUntil completion", |r| {
        r["message"] == "background done"
    });
    assert_eq!(record["request"], "GET /work");
    assert_eq!(isopod.get("/count").await.2, "1");
}

#[tokio::test]
async fn hono_app_bundled_by_esbuild() {
    let isopod = Isopod::start(&example_dist("hono.js"), &["--var", "GREETING=hi"]);
    assert_eq!(isopod.get("/").await.2, "Hello from Hono on isopod");
    assert_eq!(
        isopod.get_json("/users/42").await,
        serde_json::json!({ "id": "42", "via": "hono" })
    );
    let (status, _, body) = isopod.get("/missing").await;
    assert_eq!((status, body.as_str()), (404, "no such route"));
    let echoed = crate::streaming::post_json(isopod.addr, "/echo", r#"{"n":1}"#).await;
    assert_eq!(
        echoed,
        serde_json::json!({ "received": { "n": 1 }, "greeting": "hi" })
    );
}

#[tokio::test]
async fn itty_router_app_bundled_by_esbuild() {
    let isopod = Isopod::start(&example_dist("itty.js"), &["--var", "GREETING=hey"]);
    assert_eq!(
        isopod.get_json("/items/7").await,
        serde_json::json!({ "id": "7", "via": "itty-router" })
    );
    assert_eq!(isopod.get("/missing").await.0, 404);
    let echoed = crate::streaming::post_json(isopod.addr, "/echo", r#"[1,2]"#).await;
    assert_eq!(
        echoed,
        serde_json::json!({ "received": [1, 2], "greeting": "hey" })
    );
}
