//! `isopod deploy`, `apps`, `pool` and `rm`: the admin API from the command
//! line. Readable tables by default, the API's JSON with `--json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::admin_client::AdminClient;

/// Where the admin API is, and the token (flags or environment).
#[derive(clap::Args)]
pub(crate) struct AdminArgs {
    /// The admin API's URL.
    #[arg(
        long,
        env = "ISOPOD_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    admin_url: String,
    /// The admin token.
    #[arg(long, env = "ISOPOD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// `isopod deploy`'s arguments.
#[derive(clap::Args)]
pub(crate) struct DeployArgs {
    /// The app's name.
    name: String,
    /// The bundle to deploy.
    bundle: PathBuf,
    /// Where the app answers, as HOST, HOST/PATH or /PATH (`*.domain` for a
    /// wildcard host); repeat for more. None: `NAME.localhost`.
    #[arg(long = "route", value_name = "ROUTE")]
    routes: Vec<String>,
    /// A variable for the handler's `env`, as KEY=VALUE; repeat for more.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = crate::parse_var)]
    vars: Vec<(String, String)>,
    /// `pooled` (the default) or `isolate-per-request`.
    #[arg(long)]
    mode: Option<String>,
    /// A limit, as KEY=VALUE with a key of the manifest's `limits` table;
    /// repeat for more.
    #[arg(long = "limit", value_name = "KEY=VALUE", value_parser = crate::parse_var)]
    limits: Vec<(String, String)>,
    /// A listen port of the app's own.
    #[arg(long)]
    port: Option<u16>,
    /// Non-public hosts the bundle's `fetch` may reach; repeatable.
    #[arg(long = "allow-net", value_name = "HOST", value_delimiter = ',')]
    allow_net: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `isopod apps`, `isopod pool`: only where the admin API is.
#[derive(clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    admin: AdminArgs,
}

/// `isopod rm`'s arguments.
#[derive(clap::Args)]
pub(crate) struct RemoveArgs {
    /// The app to remove.
    name: String,
    #[command(flatten)]
    admin: AdminArgs,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<AdminClient> {
        AdminClient::new(&self.admin_url, self.admin_token.clone())
    }
}

/// Runs one admin command on a runtime of its own.
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

pub(crate) fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let source = std::fs::read_to_string(&args.bundle)
        .with_context(|| format!("cannot read the bundle {}", args.bundle.display()))?;
    let mut manifest = json!({ "bundle": source });
    if !args.routes.is_empty() {
        manifest["routes"] = Value::Array(args.routes.iter().map(|r| route(r)).collect());
    }
    if !args.vars.is_empty() {
        manifest["vars"] = json!(args.vars.iter().cloned().collect::<BTreeMap<_, _>>());
    }
    if let Some(mode) = &args.mode {
        manifest["mode"] = json!(mode);
    }
    if !args.limits.is_empty() {
        let mut limits = serde_json::Map::new();
        for (key, value) in &args.limits {
            let Ok(number) = value.parse::<u64>() else {
                bail!("--limit {key}={value}: the value must be a whole number");
            };
            limits.insert(key.clone(), json!(number));
        }
        manifest["limits"] = Value::Object(limits);
    }
    if let Some(port) = args.port {
        manifest["port"] = json!(port);
    }
    if !args.allow_net.is_empty() {
        manifest["allow_net"] = json!(args.allow_net);
    }
    let client = args.admin.client()?;
    let path = format!("/apps/{}", args.name);
    let body = serde_json::to_vec(&manifest)?;
    let answer = block_on(client.call(http::Method::PUT, &path, Some(("application/json", body))))?;
    if args.admin.json {
        println!("{answer}");
    } else {
        println!(
            "deployed {} version {}",
            answer["name"].as_str().unwrap_or(&args.name),
            answer["version"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// A route as the manifest writes it, from `HOST`, `HOST/PATH` or `/PATH`.
fn route(text: &str) -> Value {
    match text.split_once('/') {
        Some(("", path)) => json!({ "path": format!("/{path}") }),
        Some((host, path)) => json!({ "host": host, "path": format!("/{path}") }),
        None => json!({ "host": text }),
    }
}

pub(crate) fn apps(args: ListArgs) -> anyhow::Result<()> {
    let client = args.admin.client()?;
    let answer = block_on(client.call(http::Method::GET, "/apps", None))?;
    if args.admin.json {
        println!("{answer}");
        return Ok(());
    }
    let mut rows = vec![vec![
        "NAME".to_string(),
        "VERSION".to_string(),
        "MODE".to_string(),
        "ROUTES".to_string(),
    ]];
    for app in answer["apps"].as_array().into_iter().flatten() {
        let routes: Vec<String> = app["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{}{}",
                    r["host"].as_str().unwrap_or(""),
                    r["path"].as_str().unwrap_or("")
                )
            })
            .collect();
        rows.push(vec![
            text(&app["name"]),
            text(&app["version"]),
            text(&app["mode"]),
            if routes.is_empty() {
                format!("{}.localhost", text(&app["name"]))
            } else {
                routes.join(" ")
            },
        ]);
    }
    print_table(&rows);
    Ok(())
}

pub(crate) fn pool(args: ListArgs) -> anyhow::Result<()> {
    let client = args.admin.client()?;
    let answer = block_on(client.call(http::Method::GET, "/admin/pool", None))?;
    if args.admin.json {
        println!("{answer}");
        return Ok(());
    }
    for key in [
        "max_instances",
        "cached",
        "free",
        "spares",
        "tearing_down",
        "hits",
        "misses",
        "hit_rate",
        "evictions",
        "teardowns",
    ] {
        println!("{key:<14} {}", answer[key]);
    }
    let mut rows = vec![vec![
        "APP".to_string(),
        "VERSION".to_string(),
        "THREAD".to_string(),
        "REQUESTS".to_string(),
        "IN FLIGHT".to_string(),
        "HEAP MiB".to_string(),
    ]];
    for row in answer["instances"].as_array().into_iter().flatten() {
        rows.push(vec![
            text(&row["app"]),
            text(&row["version"]),
            text(&row["thread"]),
            text(&row["requests_served"]),
            text(&row["in_flight"]),
            format!(
                "{:.1}",
                row["heap_used_bytes"].as_f64().unwrap_or(0.0) / f64::from(1 << 20)
            ),
        ]);
    }
    println!();
    print_table(&rows);
    Ok(())
}

pub(crate) fn remove(args: RemoveArgs) -> anyhow::Result<()> {
    let client = args.admin.client()?;
    let path = format!("/apps/{}", args.name);
    let answer = block_on(client.call(http::Method::DELETE, &path, None))?;
    if args.admin.json {
        println!("{answer}");
    } else {
        println!("removed {}", args.name);
    }
    Ok(())
}

/// A JSON value as a table cell: strings bare, the rest as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// Prints rows as columns, each as wide as its widest cell.
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
