//! The admin API from the command line: `isopod deploy`, `apps`, `pool`,
//! `rm`, and their one-line errors (issue 19's CLI, for the endpoints the
//! admin API has today).

use serde_json::Value;

use crate::support::{admin_cli, free_port, temp_bundle, Isopod, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_list_inspect_and_remove_from_the_command_line() {
    let isopod = Isopod::serve(
        &format!("threads = 2\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n"),
        &[],
    );
    let url = format!("http://{}", isopod.admin.expect("admin enabled"));
    let bundle = temp_bundle(
        "cli-hello.js",
        "export default { fetch(request, env) { return new Response(`hello ${env.WHO}`); } };\n",
    );
    let bundle = bundle.to_str().unwrap();

    let (ok, out, err) = admin_cli(
        &url,
        ADMIN_TOKEN,
        &[
            "deploy",
            "hello",
            bundle,
            "--var",
            "WHO=cli",
            "--route",
            "hello.example/",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("deployed hello version "), "{out}");
    let (status, _, body) = isopod.get_host("hello.example", "/").await;
    assert_eq!((status, body.as_str()), (200, "hello cli"));

    let (ok, out, err) = admin_cli(&url, ADMIN_TOKEN, &["apps"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("ROUTES"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("hello") && lines[1].contains("hello.example/"),
        "{out}"
    );

    let (ok, out, err) = admin_cli(&url, ADMIN_TOKEN, &["pool", "--json"]);
    assert!(ok, "{err}");
    let pool: Value = serde_json::from_str(&out).expect("pool --json is JSON");
    assert!(pool["max_instances"].as_u64().is_some(), "{pool}");

    let (ok, out, err) = admin_cli(&url, ADMIN_TOKEN, &["rm", "hello"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "removed hello");
    assert_eq!(isopod.get_host("hello.example", "/").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_says_in_one_line_what_went_wrong() {
    let isopod = Isopod::serve(
        &format!("admin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n"),
        &[],
    );
    let url = format!("http://{}", isopod.admin.expect("admin enabled"));
    let broken = temp_bundle(
        "cli-broken.js",
        "export default {\n  fetch() { return new Response('x') }\n  oops\n};\n",
    );
    let broken = broken.to_str().unwrap();

    // A broken bundle: refused with its file:line:column.
    let (ok, _, err) = admin_cli(&url, ADMIN_TOKEN, &["deploy", "app", broken]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("(400 Bad Request)") && err.contains(":3:"),
        "{err}"
    );

    // A wrong token.
    let (ok, _, err) = admin_cli(&url, "not-the-token-at-all", &["apps"]);
    assert!(!ok);
    assert!(err.contains("refused the token (401)"), "{err}");

    // Nothing listening.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (ok, _, err) = admin_cli(&closed, ADMIN_TOKEN, &["apps"]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach the admin API at") && err.contains("refused"),
        "{err}"
    );
}
