//! `isopod deploy`, `apps`, `versions`, `rollback`, `logs`, `pool`, `rm`,
//! `kv`, `d1` and `storage`: the admin API from the command line. Readable tables by default,
//! the API's JSON with `--json`. No command prints a secret's value.

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
    /// A secret for the handler's `env`, as KEY=VALUE; repeat for more. The
    /// admin API never shows its value.
    #[arg(long = "secret", value_name = "KEY=VALUE", value_parser = crate::parse_var)]
    secrets: Vec<(String, String)>,
    /// `pooled` (the default) or `isolate-per-request`.
    #[arg(long)]
    mode: Option<String>,
    /// Startup snapshots of its versions: `on` (the default), `off`, or
    /// `share-random` (top-level `Math.random()` allowed, its values shared
    /// by every instance).
    #[arg(long)]
    snapshot: Option<String>,
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

/// `isopod versions`'s arguments.
#[derive(clap::Args)]
pub(crate) struct VersionsArgs {
    /// The app.
    name: String,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `isopod rollback`'s arguments.
#[derive(clap::Args)]
pub(crate) struct RollbackArgs {
    /// The app.
    name: String,
    /// The version to serve again (default: the one before the active one).
    version: Option<u64>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `isopod logs`'s arguments.
#[derive(clap::Args)]
pub(crate) struct LogsArgs {
    /// The app.
    name: String,
    /// Keep printing new records (console, errors, kills, access) as they
    /// come, until interrupted.
    #[arg(long, short)]
    follow: bool,
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
    if !args.secrets.is_empty() {
        manifest["secrets"] = json!(args.secrets.iter().cloned().collect::<BTreeMap<_, _>>());
    }
    if let Some(snapshot) = &args.snapshot {
        manifest["snapshot"] = json!(snapshot);
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
            "deployed {} version {} ({})",
            answer["app"].as_str().unwrap_or(&args.name),
            text(&answer["number"]),
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

pub(crate) fn versions(args: VersionsArgs) -> anyhow::Result<()> {
    let client = args.admin.client()?;
    let path = format!("/apps/{}/versions", args.name);
    let answer = block_on(client.call(http::Method::GET, &path, None))?;
    if args.admin.json {
        println!("{answer}");
        return Ok(());
    }
    let mut rows = vec![[
        "VERSION", "ACTIVE", "DEPLOYED", "BY", "HOW", "BUNDLE", "BYTES",
    ]
    .map(String::from)
    .to_vec()];
    for version in answer["versions"].as_array().into_iter().flatten() {
        let how = match version["rolled_back_from"].as_u64() {
            Some(from) => format!("rollback to {from}"),
            None => text(&version["origin"]),
        };
        rows.push(vec![
            text(&version["version"]),
            if version["active"] == json!(true) {
                "*"
            } else {
                ""
            }
            .to_string(),
            version["deployed_at_ms"]
                .as_u64()
                .map(|ms| {
                    httpdate::fmt_http_date(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                    )
                })
                .unwrap_or_default(),
            text(&version["deployed_by"]),
            how,
            version["bundle_sha256"]
                .as_str()
                .map(|hash| hash.chars().take(12).collect())
                .unwrap_or_default(),
            text(&version["bundle_bytes"]),
        ]);
    }
    print_table(&rows);
    Ok(())
}

pub(crate) fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let client = args.admin.client()?;
    let path = format!("/apps/{}/rollback", args.name);
    let body = match args.version {
        Some(version) => serde_json::to_vec(&json!({ "version": version }))?,
        None => Vec::new(),
    };
    let answer =
        block_on(client.call(http::Method::POST, &path, Some(("application/json", body))))?;
    if args.admin.json {
        println!("{answer}");
    } else {
        println!(
            "{} now serves version {} ({})",
            args.name,
            text(&answer["number"]),
            text(&answer["version"])
        );
    }
    Ok(())
}

pub(crate) fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = args.admin.client()?;
    let path = format!(
        "/apps/{}/logs{}",
        args.name,
        if args.follow { "?follow=1" } else { "" }
    );
    let json = args.admin.json;
    block_on(client.lines(&path, |line| {
        if json {
            println!("{line}");
        } else {
            println!("{}", readable_record(line));
        }
        // A reader at the end of a pipe sees each record as it comes.
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }))
}

/// A log record as one readable line: time, level, what it is, message and
/// the request it belongs to.
fn readable_record(line: &str) -> String {
    let Ok(record) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let time = record["ts_ms"]
        .as_u64()
        .map(|ms| {
            let secs = ms / 1000;
            format!(
                "{:02}:{:02}:{:02}.{:03}",
                secs / 3600 % 24,
                secs / 60 % 60,
                secs % 60,
                ms % 1000
            )
        })
        .unwrap_or_default();
    let kind = record["target"]
        .as_str()
        .and_then(|t| t.strip_prefix("isopod::"))
        .unwrap_or("log");
    let what = if kind == "access" {
        format!(
            "{} {} {} {:.1}ms{}",
            text(&record["method"]),
            text(&record["path"]),
            text(&record["status"]),
            record["duration_ms"].as_f64().unwrap_or(0.0),
            if record["cold"] == json!(true) {
                " cold"
            } else {
                ""
            }
        )
    } else {
        text(&record["message"])
    };
    let request = record["request_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map(|id| format!("  [{id}]"))
        .unwrap_or_default();
    format!(
        "{time} {:<5} {kind:<7} {what}{request}",
        text(&record["level"])
    )
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

/// `isopod kv`: an app's KV namespace, through its binding.
#[derive(clap::Subcommand)]
pub(crate) enum KvCommand {
    /// List keys (one page; `--cursor` for the next).
    List(KvListArgs),
    /// Print a key's value.
    Get(KvKeyArgs),
    /// Write a key's value.
    Put(KvPutArgs),
    /// Delete a key.
    Delete(KvKeyArgs),
}

/// `isopod kv list`'s arguments.
#[derive(clap::Args)]
pub(crate) struct KvListArgs {
    /// The app.
    app: String,
    /// Its KV binding.
    binding: String,
    /// Only keys starting with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Where the previous page ended.
    #[arg(long)]
    cursor: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `isopod kv get` and `delete`'s arguments.
#[derive(clap::Args)]
pub(crate) struct KvKeyArgs {
    /// The app.
    app: String,
    /// Its KV binding.
    binding: String,
    /// The key.
    key: String,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `isopod kv put`'s arguments.
#[derive(clap::Args)]
pub(crate) struct KvPutArgs {
    /// The app.
    app: String,
    /// Its KV binding.
    binding: String,
    /// The key.
    key: String,
    /// The value (text).
    value: String,
    /// Seconds until it expires (at least 60).
    #[arg(long)]
    ttl: Option<u64>,
    /// Metadata, as JSON.
    #[arg(long)]
    metadata: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `isopod d1`: an app's D1 database, through its binding.
#[derive(clap::Subcommand)]
pub(crate) enum D1Command {
    /// Run one SQL statement and print its rows.
    Query(D1QueryArgs),
    /// Print a database as SQL (schema and rows), e.g. `isopod d1 export
    /// shop > backup.sql`.
    Export(D1ExportArgs),
}

/// `isopod d1 query`'s arguments.
#[derive(clap::Args)]
pub(crate) struct D1QueryArgs {
    /// The app.
    app: String,
    /// Its D1 binding.
    binding: String,
    /// The statement.
    sql: String,
    /// Its parameters, each a JSON value (`42`, `"text"`, `null`).
    params: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `isopod d1 export`'s arguments.
#[derive(clap::Args)]
pub(crate) struct D1ExportArgs {
    /// `DATABASE`, or `APP BINDING` for the database an app's binding
    /// reaches.
    #[arg(num_args = 1..=2, required = true)]
    what: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Percent-encodes `text` for a path segment or a query value.
fn encoded(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(crate) fn kv(command: KvCommand) -> anyhow::Result<()> {
    match command {
        KvCommand::List(args) => {
            let client = args.admin.client()?;
            let mut path = format!("/apps/{}/kv/{}?", args.app, args.binding);
            if let Some(prefix) = &args.prefix {
                path.push_str(&format!("prefix={}&", encoded(prefix)));
            }
            if let Some(cursor) = &args.cursor {
                path.push_str(&format!("cursor={}", encoded(cursor)));
            }
            let answer = block_on(client.call(http::Method::GET, &path, None))?;
            if args.admin.json {
                println!("{answer}");
                return Ok(());
            }
            for key in answer["keys"].as_array().into_iter().flatten() {
                println!("{}", text(&key["name"]));
            }
            if let Some(cursor) = answer["cursor"].as_str() {
                eprintln!("more: --cursor {cursor}");
            }
            Ok(())
        }
        KvCommand::Get(args) => {
            let client = args.admin.client()?;
            let path = format!(
                "/apps/{}/kv/{}/{}",
                args.app,
                args.binding,
                encoded(&args.key)
            );
            let answer = block_on(client.call(http::Method::GET, &path, None))?;
            if args.admin.json {
                println!("{answer}");
            } else if let Some(value) = answer["value"].as_str() {
                println!("{value}");
            } else {
                println!("(binary, base64) {}", text(&answer["value_base64"]));
            }
            Ok(())
        }
        KvCommand::Put(args) => {
            let client = args.admin.client()?;
            let mut path = format!(
                "/apps/{}/kv/{}/{}?",
                args.app,
                args.binding,
                encoded(&args.key)
            );
            if let Some(ttl) = args.ttl {
                path.push_str(&format!("expiration_ttl={ttl}&"));
            }
            if let Some(metadata) = &args.metadata {
                path.push_str(&format!("metadata={}", encoded(metadata)));
            }
            let body = Some(("application/octet-stream", args.value.into_bytes()));
            let answer = block_on(client.call(http::Method::PUT, &path, body))?;
            if args.admin.json {
                println!("{answer}");
            } else {
                println!("stored {}", args.key);
            }
            Ok(())
        }
        KvCommand::Delete(args) => {
            let client = args.admin.client()?;
            let path = format!(
                "/apps/{}/kv/{}/{}",
                args.app,
                args.binding,
                encoded(&args.key)
            );
            let answer = block_on(client.call(http::Method::DELETE, &path, None))?;
            if args.admin.json {
                println!("{answer}");
            } else {
                println!("deleted {}", args.key);
            }
            Ok(())
        }
    }
}

pub(crate) fn d1(command: D1Command) -> anyhow::Result<()> {
    match command {
        D1Command::Query(args) => {
            let client = args.admin.client()?;
            let params = args
                .params
                .iter()
                .map(|param| {
                    serde_json::from_str::<Value>(param)
                        .with_context(|| format!("parameter {param} is not a JSON value"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let body = json!({ "sql": args.sql, "params": params }).to_string();
            let path = format!("/apps/{}/d1/{}/query", args.app, args.binding);
            let answer = block_on(client.call(
                http::Method::POST,
                &path,
                Some(("application/json", body.into_bytes())),
            ))?;
            if args.admin.json {
                println!("{answer}");
                return Ok(());
            }
            let rows = answer["results"].as_array().cloned().unwrap_or_default();
            let columns: Vec<String> = rows
                .first()
                .and_then(Value::as_object)
                .map(|row| row.keys().cloned().collect())
                .unwrap_or_default();
            if columns.is_empty() {
                println!("{} changed", text(&answer["meta"]["changes"]));
                return Ok(());
            }
            let mut table = vec![columns.clone()];
            for row in &rows {
                table.push(columns.iter().map(|c| text(&row[c])).collect());
            }
            print_table(&table);
            Ok(())
        }
        D1Command::Export(args) => {
            let client = args.admin.client()?;
            let path = match &args.what[..] {
                [database] => format!("/storage/d1/{database}/export"),
                [app, binding] => format!("/apps/{app}/d1/{binding}/export"),
                _ => bail!("name a DATABASE, or an APP and its BINDING"),
            };
            let answer = block_on(client.call(http::Method::GET, &path, None))?;
            match answer {
                Value::String(sql) => print!("{sql}"),
                other => bail!("the export was not SQL text: {other}"),
            }
            Ok(())
        }
    }
}

/// `isopod storage`: the server's KV namespaces and D1 databases as a
/// whole.
#[derive(clap::Subcommand)]
pub(crate) enum StorageCommand {
    /// List every KV namespace and D1 database, named by an app or not.
    List(ListArgs),
    /// Delete a KV namespace (`kv sqlite|redis NAME`) or a D1 database
    /// (`d1 NAME`) that no app binds, with its data.
    Drop(StorageDropArgs),
    /// Copy the KV file and every D1 database into a directory on the
    /// server's machine, with SQLite's online backup, while they serve.
    Backup(StorageBackupArgs),
}

/// `isopod storage drop`'s arguments.
#[derive(clap::Args)]
pub(crate) struct StorageDropArgs {
    /// `kv BACKEND NAME` or `d1 NAME`.
    #[arg(num_args = 2..=3, required = true)]
    what: Vec<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `isopod storage backup`'s arguments.
#[derive(clap::Args)]
pub(crate) struct StorageBackupArgs {
    /// The directory to copy into (on the server's machine).
    to: PathBuf,
    #[command(flatten)]
    admin: AdminArgs,
}

pub(crate) fn storage(command: StorageCommand) -> anyhow::Result<()> {
    match command {
        StorageCommand::List(args) => {
            let client = args.admin.client()?;
            let answer = block_on(client.call(http::Method::GET, "/storage", None))?;
            if args.admin.json {
                println!("{answer}");
                return Ok(());
            }
            let mut rows = vec![vec!["KIND".to_string(), "BACKEND".into(), "NAME".into()]];
            for namespace in answer["kv"].as_array().into_iter().flatten() {
                rows.push(vec![
                    "kv".into(),
                    text(&namespace["backend"]),
                    text(&namespace["name"]),
                ]);
            }
            for database in answer["d1"].as_array().into_iter().flatten() {
                rows.push(vec!["d1".into(), "sqlite".into(), text(database)]);
            }
            print_table(&rows);
            Ok(())
        }
        StorageCommand::Drop(args) => {
            let client = args.admin.client()?;
            let path = match args.what.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["kv", backend, name] => format!("/storage/kv/{backend}/{name}"),
                ["d1", name] => format!("/storage/d1/{name}"),
                _ => bail!("name `kv BACKEND NAME` or `d1 NAME`"),
            };
            let answer = block_on(client.call(http::Method::DELETE, &path, None))?;
            if args.admin.json {
                println!("{answer}");
            } else {
                println!("deleted {}", args.what.join(" "));
            }
            Ok(())
        }
        StorageCommand::Backup(args) => {
            let client = args.admin.client()?;
            let body = json!({ "to": args.to }).to_string();
            let answer = block_on(client.call(
                http::Method::POST,
                "/storage/backup",
                Some(("application/json", body.into_bytes())),
            ))?;
            if args.admin.json {
                println!("{answer}");
            } else {
                for file in answer["copied"].as_array().into_iter().flatten() {
                    println!("{}", text(file));
                }
            }
            Ok(())
        }
    }
}
