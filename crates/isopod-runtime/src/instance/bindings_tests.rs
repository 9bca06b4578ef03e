//! An instance's storage bindings: `env.KV` and `env.DB` reach the
//! namespace and database the app was given, through async ops.

use isopod_bindings::{Binding, BindingTarget, Bindings};
use isopod_store::kv::KvBackend;
use isopod_store::{Storage, StorageOptions};

use super::test_support::{body_text, on_local_thread, request};
use super::{AppConfig, Instance};
use crate::bundle::Bundle;

const APP: &str = r#"
export default {
  async fetch(request, env) {
    const out = {};
    await env.KV.put("greeting", "hello", { metadata: { lang: "en" } });
    out.text = await env.KV.get("greeting");
    out.meta = (await env.KV.getWithMetadata("greeting", "text")).metadata;
    await env.KV.put("bytes", new Uint8Array([1, 2, 3]));
    out.bytes = [...new Uint8Array(await env.KV.get("bytes", "arrayBuffer"))];
    await env.KV.put("doc", JSON.stringify({ n: 1 }));
    out.json = await env.KV.get("doc", { type: "json" });
    out.many = [...(await env.KV.get(["greeting", "nope"])).entries()];
    out.list = (await env.KV.list({ prefix: "b" })).keys.map((k) => k.name);
    await env.KV.delete("greeting");
    out.gone = await env.KV.get("greeting");
    try { await env.KV.get(""); } catch (e) { out.emptyKey = `${e.name}: ${e.message}`; }

    await env.DB.exec("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, name TEXT, data BLOB)");
    const ins = await env.DB.prepare("INSERT INTO t (name, data) VALUES (?, ?)")
      .bind("ada", new Uint8Array([9, 8])).run();
    out.changes = ins.meta.changes;
    out.first = await env.DB.prepare("SELECT id, name FROM t WHERE name = ?").bind("ada").first();
    out.name = await env.DB.prepare("SELECT name FROM t").first("name");
    out.raw = await env.DB.prepare("SELECT id, name FROM t").raw({ columnNames: true });
    const blob = await env.DB.prepare("SELECT data FROM t").first("data");
    out.blob = [...new Uint8Array(blob)];
    const batch = await env.DB.batch([
      env.DB.prepare("INSERT INTO t (name) VALUES (?)").bind("bob"),
      env.DB.prepare("SELECT count(*) AS n FROM t"),
    ]);
    out.batchCount = batch[1].results[0].n;
    try { await env.DB.prepare("SELEC 1").all(); } catch (e) { out.badSql = e.message; }
    return Response.json(out);
  },
};
"#;

#[test]
fn an_app_reaches_its_kv_namespace_and_d1_database() {
    let dir = std::env::temp_dir().join(format!("isopod-bindings-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    on_local_thread(move || async move {
        let storage = Storage::open(&dir, StorageOptions::default()).unwrap();
        let mut app = AppConfig::new("bound");
        app.bindings = Bindings::new(vec![
            Binding {
                name: "KV".into(),
                target: BindingTarget::Kv(storage.kv_namespace("ns", KvBackend::Sqlite).unwrap()),
            },
            Binding {
                name: "DB".into(),
                target: BindingTarget::D1(storage.d1_database("db").unwrap()),
            },
        ]);
        let bundle = Bundle::from_source("bound.js", APP);
        let mut instance = Instance::blank(&app).unwrap();
        instance.load(&bundle, &app).await.unwrap();
        let response = instance
            .spawn()
            .dispatch(request("http://x/"))
            .await
            .unwrap();
        let body = body_text(response).await;
        let out: serde_json::Value = serde_json::from_str(&body).expect(&body);
        assert_eq!(out["text"], "hello", "{out}");
        assert_eq!(out["meta"]["lang"], "en", "{out}");
        assert_eq!(out["bytes"], serde_json::json!([1, 2, 3]), "{out}");
        assert_eq!(out["json"]["n"], 1, "{out}");
        assert_eq!(
            out["many"],
            serde_json::json!([["greeting", "hello"], ["nope", null]]),
            "{out}"
        );
        assert_eq!(out["list"], serde_json::json!(["bytes"]), "{out}");
        assert_eq!(out["gone"], serde_json::Value::Null, "{out}");
        assert_eq!(
            out["emptyKey"], "TypeError: Key name cannot be empty.",
            "{out}"
        );
        assert_eq!(out["changes"], 1, "{out}");
        assert_eq!(
            out["first"],
            serde_json::json!({"id": 1, "name": "ada"}),
            "{out}"
        );
        assert_eq!(out["name"], "ada", "{out}");
        assert_eq!(
            out["raw"],
            serde_json::json!([["id", "name"], [1, "ada"]]),
            "{out}"
        );
        assert_eq!(out["blob"], serde_json::json!([9, 8]), "{out}");
        assert_eq!(out["batchCount"], 2, "{out}");
        assert!(
            out["badSql"]
                .as_str()
                .unwrap()
                .starts_with("D1_ERROR: near \"SELEC\""),
            "{out}"
        );
        drop(storage);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
