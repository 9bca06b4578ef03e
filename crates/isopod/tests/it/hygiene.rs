//! Spectre hygiene and WebCrypto bounds, as workerd has them: the clock does
//! not advance while JavaScript runs, there is no shared memory to build a
//! timer from, and WebCrypto's costly parameters are capped (PBKDF2 at
//! 100,000 iterations, Argon2's memory and passes, RSA key sizes).
//!
//! Nothing here measures time: only whether the clock moved. The clock is
//! set each time the host enters the isolate (a dispatch, one turn of the
//! event loop), so it stands still through synchronous code and through a
//! chain of microtasks, which one turn drains, and moves across turns.

use serde_json::json;

use crate::support::{temp_bundle, Isopod};

#[tokio::test]
async fn the_clock_stands_still_while_javascript_runs() {
    let bundle = temp_bundle(
        "clock.js",
        "function spin() { let x = 0; for (let i = 0; i < 2e7; i++) x += i; return x; }\n\
         export default { async fetch() {\n\
           const format = new Intl.DateTimeFormat('en', { hour: 'numeric', minute: 'numeric', second: 'numeric', fractionalSecondDigits: 3, timeZone: 'UTC' });\n\
           const before = { date: Date.now(), perf: performance.now(), constructed: new Date().getTime(), called: Date(), formatted: format.format(), parts: JSON.stringify(format.formatToParts()) };\n\
           const spun = spin();\n\
           const mark = performance.mark('after-spin').startTime;\n\
           const afterSpin = { date: Date.now(), perf: performance.now(), constructed: new Date().getTime(), called: Date(), formatted: format.format(), parts: JSON.stringify(format.formatToParts()) };\n\
           await Promise.resolve();\n\
           const beforeMicrotasks = Date.now();\n\
           for (let i = 0; i < 1000; i++) { await null; if (i % 250 === 0) spin(); }\n\
           const afterMicrotasks = Date.now();\n\
           await new Promise((resolve) => setTimeout(resolve, 20));\n\
           const afterTimer = { date: Date.now(), perf: performance.now() };\n\
           return Response.json({\n\
             spun: spun > 0,\n\
             stillDuringSpin: JSON.stringify(before) === JSON.stringify(afterSpin),\n\
             constructedIsNow: before.constructed === before.date,\n\
             markIsNow: mark === before.perf,\n\
             stillAcrossMicrotasks: afterMicrotasks === beforeMicrotasks,\n\
             movedAfterTimer: afterTimer.date > before.date && afterTimer.perf > before.perf,\n\
             wholeMilliseconds: Number.isInteger(before.perf) && Number.isInteger(performance.timeOrigin),\n\
           });\n\
         } };\n",
    );
    // The spins take longer than the default 50 ms of CPU per request.
    let isopod = Isopod::start(&bundle, &["--limit", "cpu_ms=10000"]);
    assert_eq!(
        isopod.get_json("/").await,
        json!({
            "spun": true,
            "stillDuringSpin": true,
            "constructedIsNow": true,
            "markIsNow": true,
            "stillAcrossMicrotasks": true,
            "movedAfterTimer": true,
            "wholeMilliseconds": true,
        })
    );
}

#[tokio::test]
async fn date_still_behaves_as_date() {
    let bundle = temp_bundle(
        "date.js",
        "class Later extends Date { later() { return this.getTime() + 1; } }\n\
         export default { fetch() {\n\
           return Response.json([\n\
             new Date(0).toISOString(),\n\
             new Date(2020, 0, 2, 3, 4, 5, 6).getMilliseconds(),\n\
             new Date('2020-01-01T00:00:00Z').getTime(),\n\
             Date.parse('2020-01-01T00:00:00Z'),\n\
             Date.UTC(2020, 0, 1),\n\
             new Date() instanceof Date,\n\
             new Date(5) instanceof Date,\n\
             Object.prototype.toString.call(new Date()),\n\
             typeof Date(),\n\
             Date(1, 2, 3) === new Date(Date.now()).toString(),\n\
             Date.prototype.constructor === Date,\n\
             Object.getPrototypeOf(new Date()) === Date.prototype,\n\
             [Date.name, Date.length],\n\
             new Later(1).later(),\n\
             new Later() instanceof Date,\n\
             new Later().getTime() === Date.now(),\n\
             Object.getOwnPropertyDescriptor(Date, 'prototype').writable,\n\
             Object.keys(Date).length,\n\
             JSON.stringify({ d: new Date(0) }),\n\
           ]);\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    assert_eq!(
        isopod.get_json("/").await,
        json!([
            "1970-01-01T00:00:00.000Z",
            6,
            1577836800000u64,
            1577836800000u64,
            1577836800000u64,
            true,
            true,
            "[object Date]",
            "string",
            true,
            true,
            true,
            ["Date", 7],
            2,
            true,
            true,
            false,
            0,
            "{\"d\":\"1970-01-01T00:00:00.000Z\"}",
        ])
    );
}

#[tokio::test]
async fn there_is_no_shared_memory_and_no_blocking_wait() {
    let bundle = temp_bundle(
        "shared.js",
        "export default { fetch() {\n\
           const ints = new Int32Array(4);\n\
           Atomics.add(ints, 0, 5);\n\
           return Response.json({\n\
             sharedArrayBuffer: typeof SharedArrayBuffer,\n\
             onGlobal: 'SharedArrayBuffer' in globalThis,\n\
             wait: typeof Atomics.wait,\n\
             waitAsync: typeof Atomics.waitAsync,\n\
             atomicsStillAdd: Atomics.load(ints, 0),\n\
           });\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &[]);
    assert_eq!(
        isopod.get_json("/").await,
        json!({
            "sharedArrayBuffer": "undefined",
            "onGlobal": false,
            "wait": "undefined",
            "waitAsync": "undefined",
            "atomicsStillAdd": 5,
        })
    );
}

#[tokio::test]
async fn webcrypto_costs_are_capped_before_any_work_is_done() {
    let bundle = temp_bundle(
        "crypto-caps.js",
        "async function outcome(promise) {\n\
           try { return await promise; } catch (error) { return [error.constructor.name, error.name, error.message]; }\n\
         }\n\
         async function derive(iterations, how) {\n\
           const key = await crypto.subtle.importKey('raw', new TextEncoder().encode('password'), 'PBKDF2', false, ['deriveBits', 'deriveKey']);\n\
           const algorithm = { name: 'PBKDF2', hash: 'SHA-256', salt: new Uint8Array(16), iterations };\n\
           if (how === 'bits') return outcome(crypto.subtle.deriveBits(algorithm, key, 256).then((bits) => bits.byteLength));\n\
           return outcome(crypto.subtle.deriveKey(algorithm, key, { name: 'AES-GCM', length: 256 }, true, ['encrypt']).then((k) => k.algorithm.length));\n\
         }\n\
         async function argon2(memory, passes) {\n\
           const key = await crypto.subtle.importKey('raw', new TextEncoder().encode('password'), 'Argon2id', false, ['deriveBits']);\n\
           const algorithm = { name: 'argon2id', nonce: new Uint8Array(16), memory, passes, parallelism: 1 };\n\
           return outcome(crypto.subtle.deriveBits(algorithm, key, 256).then((bits) => bits.byteLength));\n\
         }\n\
         function rsa(modulusLength) {\n\
           const algorithm = { name: 'RSA-PSS', modulusLength, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };\n\
           return outcome(crypto.subtle.generateKey(algorithm, false, ['sign']).then((pair) => pair.privateKey.algorithm.modulusLength));\n\
         }\n\
         export default { async fetch() {\n\
           let flips = 0;\n\
           const sneaky = { name: 'PBKDF2', hash: 'SHA-256', salt: new Uint8Array(16), get iterations() { return flips++ === 0 ? 1000 : 200000; } };\n\
           const key = await crypto.subtle.importKey('raw', new TextEncoder().encode('password'), 'PBKDF2', false, ['deriveBits']);\n\
           await crypto.subtle.deriveBits(sneaky, key, 256);\n\
           return Response.json({\n\
             bits100k: await derive(100000, 'bits'),\n\
             bits200k: await derive(200000, 'bits'),\n\
             key200k: await derive(200000, 'key'),\n\
             key1k: await derive(1000, 'key'),\n\
             iterationsReadOnce: flips,\n\
             argon2Small: await argon2(64, 1),\n\
             argon2Memory: await argon2(65537, 1),\n\
             argon2Passes: await argon2(64, 11),\n\
             rsa8192: await rsa(8192),\n\
             lengths: [crypto.subtle.deriveBits.length, crypto.subtle.deriveKey.length, crypto.subtle.generateKey.length, crypto.subtle.digest.length],\n\
             names: [crypto.subtle.deriveBits.name, crypto.subtle.digest.name],\n\
           });\n\
         } };\n",
    );
    // The derivations' CPU is charged to the request: unoptimised test
    // builds of the crypto libraries need more than the default 50 ms.
    let isopod = Isopod::start(&bundle, &["--limit", "cpu_ms=60000"]);
    let refused = |message: &str| json!(["DOMException", "NotSupportedError", message]);
    let pbkdf2_refused =
        refused("PBKDF2 with more than 100000 iterations is not supported (200000 requested)");
    assert_eq!(
        isopod.get_json("/").await,
        json!({
            "bits100k": 32,
            "bits200k": pbkdf2_refused,
            "key200k": pbkdf2_refused,
            "key1k": 256,
            "iterationsReadOnce": 1,
            "argon2Small": 32,
            "argon2Memory": refused("Argon2 with more than 65536 KiB of memory is not supported (65537 requested)"),
            "argon2Passes": refused("Argon2 with more than 10 passes is not supported (11 requested)"),
            "rsa8192": refused("RSA keys longer than 4096 bits are not generated (8192 requested)"),
            "lengths": [2, 5, 3, 2],
            "names": ["deriveBits", "digest"],
        })
    );
}
