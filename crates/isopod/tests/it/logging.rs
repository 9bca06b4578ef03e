//! console output becomes structured log records naming the app and the
//! request; stray rejections are logged and do not kill the isolate.

use crate::support::{temp_bundle, Isopod};

#[tokio::test]
async fn console_calls_are_structured_records() {
    let bundle = temp_bundle(
        "console.js",
        "console.log('at top level');\n\
         export default { fetch(request) {\n\
           console.log('plain', { nested: [1, 2] });\n\
           console.info('info'); console.debug('debug'); console.warn('careful'); console.error(new Error('bad'));\n\
           return new Response('ok');\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &["--name", "shop"]);
    assert_eq!(isopod.get("/cart?id=1").await.2, "ok");
    let record = isopod.wait_for_log("console.log", |r| {
        r["message"] == "plain { nested: [ 1, 2 ] }"
    });
    assert_eq!(record["app"], "shop");
    assert_eq!(record["request"], "GET /cart?id=1");
    assert_eq!(record["target"], "isopod::console");
    assert_eq!(record["level"], "INFO");
    let warn = isopod.wait_for_log("console.warn", |r| r["message"] == "careful");
    assert_eq!(warn["level"], "WARN");
    let error = isopod.wait_for_log("console.error", |r| {
        r["target"] == "isopod::console" && r["level"] == "ERROR"
    });
    assert!(
        error["message"].as_str().unwrap().starts_with("Error: bad"),
        "{error}"
    );
    let top = isopod.wait_for_log("top-level log", |r| r["message"] == "at top level");
    assert_eq!(top["request"], "");
}

#[tokio::test]
async fn an_unhandled_rejection_is_logged_and_the_isolate_keeps_serving() {
    let bundle = temp_bundle(
        "reject.js",
        "let served = 0;\n\
         export default { fetch() {\n\
           served++;\n\
           Promise.reject(new Error('stray'));\n\
           setTimeout(() => { throw new Error('from a timer'); }, 1);\n\
           return new Response(String(served));\n\
         } };\n",
    );
    let isopod = Isopod::start(&bundle, &["--threads", "1"]);
    assert_eq!(isopod.get("/one").await.2, "1");
    let record = isopod.wait_for_log("the rejection", |r| {
        r["message"] == "unhandled promise rejection"
    });
    assert_eq!(record["request"], "GET /one");
    assert!(record["error"].as_str().unwrap().contains("Error: stray"));
    let record = isopod.wait_for_log("the timer's exception", |r| {
        r["message"] == "uncaught exception"
    });
    assert!(
        record["error"].as_str().unwrap().contains("from a timer"),
        "{record}"
    );
    // Same instance, still alive, state kept.
    assert_eq!(isopod.get("/two").await.2, "2");
}
