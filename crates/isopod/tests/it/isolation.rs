//! What tenant code can reach: exactly the allow-listed globals, no deno
//! internals, and no code generation from strings.

use crate::support::{fixture, temp_bundle, Isopod};

#[tokio::test]
async fn the_global_object_matches_the_allow_list() {
    let bundle = temp_bundle(
        "globals.js",
        "export default { fetch() { return Response.json(Object.getOwnPropertyNames(globalThis).sort()); } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    let got: Vec<String> = serde_json::from_value(isopod.get_json("/").await).unwrap();
    let allowed: Vec<String> = std::fs::read_to_string(fixture("globals.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect();
    let leaked: Vec<_> = got.iter().filter(|g| !allowed.contains(g)).collect();
    let missing: Vec<_> = allowed.iter().filter(|a| !got.contains(a)).collect();
    assert!(
        leaked.is_empty() && missing.is_empty(),
        "leaked: {leaked:?}\nmissing: {missing:?}"
    );
}

#[tokio::test]
async fn deno_internals_are_unreachable() {
    let bundle = temp_bundle(
        "internals.js",
        "export default { async fetch() {\n\
           let dynamicImport;\n\
           try { await import('ext:core/mod.js'); dynamicImport = 'loaded'; } catch (e) { dynamicImport = e.name; }\n\
           return Response.json([typeof Deno, typeof __bootstrap, typeof __isopodInit, typeof process, typeof require, typeof globalThis.Deno?.core, dynamicImport]);\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    assert_eq!(
        isopod.get_json("/").await,
        serde_json::json!([
            "undefined",
            "undefined",
            "undefined",
            "undefined",
            "undefined",
            "undefined",
            "TypeError"
        ])
    );
}

#[tokio::test]
async fn code_generation_from_strings_is_refused_and_the_isolate_keeps_serving() {
    let bundle = temp_bundle(
        "codegen.js",
        "export default { fetch() {\n\
           const paths = {\n\
             eval: () => eval('1 + 1'),\n\
             indirectEval: () => (0, eval)('1 + 1'),\n\
             Function: () => new Function('return 1')(),\n\
             FunctionCall: () => Function('return 1')(),\n\
             AsyncFunction: () => (async () => {}).constructor('return 1')(),\n\
             GeneratorFunction: () => (function* () {}).constructor('yield 1')().next(),\n\
             setTimeout: () => setTimeout('globalThis.pwned = 1', 0),\n\
             setInterval: () => setInterval('globalThis.pwned = 1', 10),\n\
           };\n\
           const out = {};\n\
           for (const [name, run] of Object.entries(paths)) { try { run(); out[name] = 'ran'; } catch (e) { out[name] = e.name; } }\n\
           out.pwned = typeof globalThis.pwned;\n\
           return Response.json(out);\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    for _ in 0..2 {
        let out = isopod.get_json("/").await;
        for path in [
            "eval",
            "indirectEval",
            "Function",
            "FunctionCall",
            "AsyncFunction",
            "GeneratorFunction",
        ] {
            assert_eq!(out[path], "EvalError", "{path}: {out}");
        }
        assert_eq!(out["setTimeout"], "TypeError", "{out}");
        assert_eq!(out["setInterval"], "TypeError", "{out}");
        assert_eq!(out["pwned"], "undefined");
    }
}
