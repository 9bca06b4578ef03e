//! The `isopod` command: serve Workers-style JavaScript bundles.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use isopod_runtime::{AppConfig, Bundle, NetPolicy};
use isopod_server::{
    AppManifest, AppSettings, D1BindingSpec, Http1Path, KvBindingSpec, LogTail, PoolConfig, Route,
    Server, ServerConfig, Storage, StorageOptions, Store, StoreOptions,
};

use crate::config::LogFormat;

mod admin_client;
mod admin_commands;
mod config;
mod log_output;

/// isopod: a self-hosted, multi-tenant JavaScript edge runtime on V8.
///
/// It serves Workers-style bundles (an ES module exporting `default { fetch }`,
/// or a service-worker script calling `addEventListener('fetch', …)`), each in
/// its own V8 isolate, with the WinterCG web APIs.
#[derive(Parser)]
#[command(
    name = "isopod",
    version,
    about,
    long_about,
    after_help = "Environment: ISOPOD_LOG sets the log filter (default `info`; e.g. `debug`, `isopod::console=warn`)."
)]
struct Cli {
    /// How log records are written to stderr: `json` (one object per line)
    /// or `pretty` (for a terminal). Default: the config's `log_format`,
    /// else json.
    #[arg(long, global = true, env = "ISOPOD_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one bundle over HTTP/1.1.
    ///
    /// Every request, whatever its host or path, goes to the bundle's fetch
    /// handler. Console output and errors are written to stderr as JSON log
    /// records naming the app and the request.
    Run(RunArgs),
    /// Serve the apps of a config file.
    ///
    /// The config (TOML) names the listen address, the pool settings and the
    /// apps, each with its bundle, routes (host, `*.` wildcard host, path
    /// prefix), variables, execution mode and optionally a port of its own.
    /// An app without routes answers on `NAME.localhost`.
    Serve(ServeArgs),
    /// Deploy (or hot-swap) an app through a running server's admin API.
    Deploy(admin_commands::DeployArgs),
    /// List the deployed apps.
    Apps(admin_commands::ListArgs),
    /// List an app's versions, newest first.
    Versions(admin_commands::VersionsArgs),
    /// Serve an earlier version of an app again (by default, the one
    /// before the active one), recorded as a new version.
    Rollback(admin_commands::RollbackArgs),
    /// Print an app's recent log records; `--follow` keeps printing.
    Logs(admin_commands::LogsArgs),
    /// Show the instance pool: counts and a row per instance.
    Pool(admin_commands::ListArgs),
    /// Remove an app.
    Rm(admin_commands::RemoveArgs),
    /// An app's KV namespace through its binding: list, get, put, delete.
    #[command(subcommand)]
    Kv(admin_commands::KvCommand),
    /// An app's D1 database through its binding: a query, or an export as
    /// SQL.
    #[command(subcommand)]
    D1(admin_commands::D1Command),
    /// The server's KV namespaces and D1 databases as a whole: list, drop
    /// one no app binds, back them up online.
    #[command(subcommand)]
    Storage(admin_commands::StorageCommand),
    /// Makes one version's startup snapshot: the request on stdin, the
    /// snapshot on stdout. Run by the server itself, in a process of its
    /// own per snapshot.
    #[command(name = "__snapshot", hide = true)]
    Snapshot,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The config file.
    #[arg(long, short, default_value = "isopod.toml")]
    config: PathBuf,
    /// The registry's directory: deployed apps and their versions live
    /// there across restarts. Default: the config's `data_dir`, else
    /// ./isopod-data.
    #[arg(long, env = "ISOPOD_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The bundle: one self-contained JavaScript file (for example the output
    /// of `esbuild --bundle --format=esm`).
    bundle: PathBuf,
    /// The TCP port to listen on (0 picks a free one).
    #[arg(long, short, default_value_t = 8080, env = "ISOPOD_PORT")]
    port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "ISOPOD_HOST")]
    host: IpAddr,
    /// A variable for the handler's `env`, as KEY=VALUE; repeat for more.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// The app's name in log records (default: the bundle's file name).
    #[arg(long)]
    name: Option<String>,
    /// Worker threads (default: one per core).
    #[arg(long, env = "ISOPOD_THREADS")]
    threads: Option<usize>,
    /// A limit for the app, as KEY=VALUE with a key of the manifest's
    /// `limits` table (for example `cpu_ms=200`); repeat for more.
    #[arg(long = "limit", value_name = "KEY=VALUE", value_parser = parse_var)]
    limits: Vec<(String, String)>,
    /// Non-public hosts the bundle's `fetch` may reach, comma-separated:
    /// `host`, `host:port`, `*.domain`, an IP, `ip:port`, `[v6]:port` or a
    /// CIDR range (for example `127.0.0.1:9000,10.1.0.0/16,api.internal`).
    /// Public addresses are always reachable; loopback, private, link-local
    /// and other reserved ranges, this machine's own addresses and isopod's
    /// own listeners are not unless listed (the listeners never are).
    #[arg(long = "allow-net", value_name = "HOST", value_delimiter = ',')]
    allow_net: Vec<String>,
    /// A Workers KV namespace on the handler's `env`, as BINDING or
    /// BINDING=NAMESPACE (default: the binding's name); repeat for more.
    #[arg(long = "kv", value_name = "BINDING[=NAMESPACE]")]
    kv: Vec<String>,
    /// A D1 database on the handler's `env`, as BINDING or
    /// BINDING=DATABASE (default: the binding's name); repeat for more.
    #[arg(long = "d1", value_name = "BINDING[=DATABASE]")]
    d1: Vec<String>,
    /// Where KV namespaces and D1 databases live. Default: a temporary
    /// directory, removed when isopod stops.
    #[arg(long, env = "ISOPOD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Which HTTP/1.1 stack reads requests: `own` (isopod's path, then
    /// hyper) or `hyper` alone. For comparing the two; hidden from help.
    #[arg(long = "http1", hide = true, default_value = "own", value_parser = parse_http1)]
    http1: Http1Path,
}

fn parse_http1(text: &str) -> Result<Http1Path, String> {
    match text {
        "own" => Ok(Http1Path::Own),
        "hyper" => Ok(Http1Path::Hyper),
        _ => Err(format!("expected own or hyper, got '{text}'")),
    }
}

pub(crate) fn parse_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{text}'")),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Snapshot = cli.command {
        // No logging, no platform set-up: the snapshotting process sets V8
        // up for making a snapshot, and its stderr is discarded.
        let status = isopod_runtime::version_snapshot::serve_snapshot_request();
        return std::process::ExitCode::from(u8::try_from(status).unwrap_or(1));
    }
    let format = cli.log_format;
    let outcome = match cli.command {
        Command::Run(args) => run(args, format),
        Command::Serve(args) => serve(args, format),
        Command::Deploy(args) => admin_commands::deploy(args),
        Command::Apps(args) => admin_commands::apps(args),
        Command::Versions(args) => admin_commands::versions(args),
        Command::Rollback(args) => admin_commands::rollback(args),
        Command::Logs(args) => admin_commands::logs(args),
        Command::Pool(args) => admin_commands::pool(args),
        Command::Rm(args) => admin_commands::remove(args),
        Command::Kv(command) => admin_commands::kv(command),
        Command::D1(command) => admin_commands::d1(command),
        Command::Storage(command) => admin_commands::storage(command),
        Command::Snapshot => Ok(()),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line, the cause chain included, whatever RUST_BACKTRACE says.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Installs the process's subscriber: records to stderr as `format` says,
/// filtered by `ISOPOD_LOG`, and every app's records to `tail`, unfiltered
/// (the admin API's `logs` shows an app's console whatever stderr keeps).
/// stderr is written by a thread of its own (`log_output.rs`); the
/// returned guard writes what is left when dropped.
fn init_logging(format: LogFormat, tail: Option<&Arc<LogTail>>) -> log_output::FlushOnDrop {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let filter = EnvFilter::try_from_env("ISOPOD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = log_output::BatchedStderr::start();
    let output = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(log_output::JsonLines)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_target(true)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(output)
        .with(tail.map(|tail| tail.layer()))
        .init();
    guard
}

fn run(args: RunArgs, format: Option<LogFormat>) -> anyhow::Result<()> {
    let _logging = init_logging(format.unwrap_or_default(), None);
    if !args.bundle.is_file() {
        bail!("bundle not found: {}", args.bundle.display());
    }
    let bundle = Bundle::from_file(&args.bundle)?;
    let storage = run_storage(&args)?;
    let name = args.name.unwrap_or_else(|| {
        args.bundle
            .file_stem()
            .map_or_else(|| "app".to_string(), |s| s.to_string_lossy().into_owned())
    });
    let threads = args.threads.unwrap_or_else(config::default_threads);
    let limits = config::process_limits(&config::limit_overrides(&args.limits)?)?;
    let net = NetPolicy::allowing(&args.allow_net).context("--allow-net")?;
    let bindings = AppSettings {
        vars: args.vars.iter().cloned().collect(),
        kv: args
            .kv
            .iter()
            .map(|spec| {
                let (binding, namespace) = split_binding(spec);
                KvBindingSpec {
                    binding,
                    namespace,
                    backend: None,
                }
            })
            .collect(),
        d1: args
            .d1
            .iter()
            .map(|spec| {
                let (binding, database) = split_binding(spec);
                D1BindingSpec { binding, database }
            })
            .collect(),
        ..AppSettings::default()
    }
    .bindings(&name, storage.as_ref().map(|(storage, _)| &**storage))?;
    let mut app = AppManifest::new(
        AppConfig {
            name: Arc::from(name.as_str()),
            vars: args.vars,
            limits: limits.clone(),
            net,
            fetches: Default::default(),
            snapshot: Default::default(),
            bindings,
        },
        bundle,
    );
    // The one app answers every host and path.
    app.routes = vec![Route::default()];
    let mut config = ServerConfig::new(
        SocketAddr::new(args.host, args.port),
        PoolConfig {
            threads,
            // One app: a spare would only cost memory.
            spares_per_thread: 0,
            limits,
            v8: config::v8_settings(),
            ..PoolConfig::default()
        },
        vec![app],
    );
    config.http1 = args.http1;
    config.snapshotter = config::snapshotter(None)?;
    if let Some(access_log) = config::access_log_from_env()? {
        config.edge.access_log = access_log;
    }
    let temporary = storage
        .as_ref()
        .and_then(|(_, temporary)| temporary.clone());
    config.storage = storage.map(|(storage, _)| storage);
    let served = start_and_wait(config, DRAIN);
    if let Some(dir) = temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    served
}

/// `BINDING` or `BINDING=NAME`.
fn split_binding(spec: &str) -> (String, Option<String>) {
    match spec.split_once('=') {
        Some((binding, name)) => (binding.to_string(), Some(name.to_string())),
        None => (spec.to_string(), None),
    }
}

/// The storage of `isopod run`'s bindings, if it has any: in `--data-dir`,
/// or in a temporary directory (then also returned, to be removed at exit),
/// which it says at start.
fn run_storage(args: &RunArgs) -> anyhow::Result<Option<(Arc<Storage>, Option<PathBuf>)>> {
    if args.kv.is_empty() && args.d1.is_empty() {
        return Ok(None);
    }
    let (dir, temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = std::env::temp_dir().join(format!("isopod-run-{}", std::process::id()));
            tracing::warn!(
                data_dir = %dir.display(),
                "KV and D1 data is kept in a temporary directory and removed when isopod stops; give --data-dir to keep it"
            );
            (dir.clone(), Some(dir))
        }
    };
    let storage = Storage::open(&dir, StorageOptions::default())
        .with_context(|| format!("cannot use the data directory {}", dir.display()))?;
    Ok(Some((Arc::new(storage), temporary)))
}

fn serve(args: ServeArgs, format: Option<LogFormat>) -> anyhow::Result<()> {
    let loaded = config::load(&args.config, args.data_dir);
    let tail = LogTail::new();
    let format = format
        .or_else(|| loaded.as_ref().ok().and_then(|(_, s)| s.log_format))
        .unwrap_or_default();
    let _logging = init_logging(format, Some(&tail));
    let (mut config, settings) = loaded?;
    let data_dir = settings.data_dir;
    let store = Store::open(
        &data_dir,
        StoreOptions {
            keep_versions: settings.keep_versions,
        },
    )
    .with_context(|| format!("cannot use the data directory {}", data_dir.display()))?;
    tracing::info!(
        data_dir = %data_dir.display(),
        keep_versions = settings.keep_versions,
        "the registry is open"
    );
    config.store = Some(Arc::new(store));
    config.log_tail = Some(tail);
    start_and_wait(config, settings.drain)
}

fn start_and_wait(config: ServerConfig, drain: std::time::Duration) -> anyhow::Result<()> {
    let threads = config.pool.threads;
    let apps: Vec<String> = config
        .apps
        .iter()
        .map(|a| a.config.name.to_string())
        .collect();
    let started = std::time::Instant::now();
    let server = Server::start(config).context("isopod could not start")?;
    tracing::info!(
        app = %apps.join(","),
        url = %format!("http://{}", server.local_addr()),
        admin_url = %server.admin_addr().map(|a| format!("http://{a}")).unwrap_or_default(),
        threads,
        startup_ms = started.elapsed().as_secs_f64() * 1000.0,
        snapshot_bytes = isopod_runtime::snapshot_size(),
        "listening"
    );
    let signal = wait_for_stop_signal()?;
    // A second signal while draining stops at once.
    std::thread::spawn(|| {
        if let Ok(signal) = wait_for_stop_signal() {
            tracing::warn!(
                signal,
                "stopped at once, without waiting for requests in flight"
            );
            std::process::exit(1);
        }
    });
    tracing::info!(
        signal,
        drain_s = drain.as_secs(),
        "stopping: no new connections; requests in flight finish"
    );
    let left = server.shutdown_gracefully(drain);
    if left > 0 {
        tracing::warn!(
            requests = left,
            "stopped with requests still in flight after the drain time"
        );
    } else {
        tracing::info!("stopped: every request in flight finished");
    }
    Ok(())
}

/// How long a stopping `isopod run` lets requests in flight finish.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Blocks until SIGTERM or SIGINT; returns which.
fn wait_for_stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        })
    })
}
