//! `isopod.toml`: the server's listen address, pool settings and apps.
//!
//! Every environment variable isopod reads overrides the config key it names
//! (see the table in README.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use isopod_runtime::{Bundle, LimitOverrides, Limits};
use isopod_server::{
    AccessLog, AdminConfig, AppManifest, AppSettings, EdgeConfig, PoolConfig, ServerConfig,
    Storage, StorageOptions, TrustedProxies,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    threads: Option<usize>,
    max_instances: Option<usize>,
    spares_per_thread: Option<usize>,
    max_concurrency: Option<usize>,
    replica_threshold: Option<usize>,
    replica_queue_wait_ms: Option<u64>,
    max_replicas: Option<usize>,
    replica_idle_ms: Option<u64>,
    admin_listen: Option<SocketAddr>,
    admin_token: Option<String>,
    /// More admin tokens, each with a name that deploys record.
    #[serde(default)]
    admin_tokens: Vec<NamedToken>,
    memory_budget_mb: Option<u64>,
    /// The registry's directory (relative to the config file's), where
    /// apps' KV namespaces and D1 databases live too.
    data_dir: Option<PathBuf>,
    /// The Redis server of KV namespaces with `backend = "redis"`
    /// (`redis://host:port[/db]`; `ISOPOD_REDIS_URL` overrides it).
    redis_url: Option<String>,
    /// Versions kept per app in the registry.
    keep_versions: Option<usize>,
    /// Addresses and CIDR ranges whose forwarding headers are believed.
    #[serde(default)]
    trusted_proxies: Vec<String>,
    /// Whether requests get access records (default true).
    access_log: Option<bool>,
    /// The share of requests that get one (default 1.0).
    access_log_sample: Option<f64>,
    /// Apps with `/metrics` series of their own.
    metrics_max_apps: Option<usize>,
    /// How long a stopping server lets requests in flight finish.
    drain_timeout_s: Option<u64>,
    /// `json` (default) or `pretty`.
    log_format: Option<LogFormat>,
    /// Whether each version gets a startup snapshot (default true).
    snapshots: Option<bool>,
    /// Whether a deploy leaves one warm instance of the new version
    /// (default true).
    warm_on_deploy: Option<bool>,
    /// The process's default limits (each app may override them).
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    apps: Vec<toml::Table>,
}

/// An `[[apps]]` entry's own keys; the rest are the [`AppSettings`] every
/// manifest shares.
#[derive(Debug, Deserialize)]
struct AppIdentity {
    name: String,
    bundle: PathBuf,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedToken {
    name: String,
    token: String,
}

/// How log records are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

/// What `isopod serve` needs besides the server's own config.
#[derive(Debug)]
pub(crate) struct ServeSettings {
    /// The registry's directory.
    pub(crate) data_dir: PathBuf,
    /// Versions kept per app.
    pub(crate) keep_versions: usize,
    /// How long a stopping server lets requests in flight finish.
    pub(crate) drain: Duration,
    /// How log records are written (`None`: not set in the file).
    pub(crate) log_format: Option<LogFormat>,
}

/// The registry's directory when neither `--data-dir` nor `data_dir` says.
pub(crate) const DEFAULT_DATA_DIR: &str = "./isopod-data";

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// Reads `path` and applies the environment overrides; `data_dir`, when
/// given, wins over the file's. Opens apps' storage in the data directory
/// (their bindings are opened as their manifests are made).
pub(crate) fn load(
    path: &Path,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<(ServerConfig, ServeSettings)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: ConfigFile = toml::from_str(&text).map_err(|error| invalid(path, &text, &error))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let limits = process_limits(&file.limits)?;
    let data_dir = data_dir.unwrap_or_else(|| {
        file.data_dir
            .as_ref()
            .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), |dir| base.join(dir))
    });
    let redis_url = std::env::var("ISOPOD_REDIS_URL")
        .ok()
        .or(file.redis_url.clone());
    let storage = Storage::open(
        &data_dir,
        StorageOptions {
            redis_url,
            ..StorageOptions::default()
        },
    )
    .with_context(|| format!("cannot use the data directory {}", data_dir.display()))?;
    let mut apps = Vec::new();
    for app in file.apps {
        apps.push(manifest(app, base, &limits, &storage)?);
    }
    let defaults = PoolConfig::default();
    let trusted_proxies = TrustedProxies::parse(&file.trusted_proxies)
        .map_err(|e| anyhow!("{}: trusted_proxies: {e}", path.display()))?;
    let access_log = match (file.access_log, file.access_log_sample) {
        (Some(false), _) => AccessLog::OFF,
        (_, Some(sample)) if (0.0..=1.0).contains(&sample) => AccessLog { sample },
        (_, Some(sample)) => {
            return Err(anyhow!(
                "{}: access_log_sample: {sample} is not between 0 and 1",
                path.display()
            ))
        }
        (_, None) => AccessLog::default(),
    };
    let settings = ServeSettings {
        data_dir,
        keep_versions: file.keep_versions.unwrap_or(20).max(1),
        drain: Duration::from_secs(file.drain_timeout_s.unwrap_or(30)),
        log_format: file.log_format,
    };
    let mut config = ServerConfig {
        listen: file.listen,
        pool: PoolConfig {
            threads: file.threads.unwrap_or(defaults.threads),
            max_instances: file.max_instances.unwrap_or(defaults.max_instances),
            spares_per_thread: file.spares_per_thread.unwrap_or(defaults.spares_per_thread),
            max_concurrency: file.max_concurrency.unwrap_or(defaults.max_concurrency),
            replica_threshold: file.replica_threshold.unwrap_or(defaults.replica_threshold),
            replica_queue_wait: file.replica_queue_wait_ms.map_or(
                defaults.replica_queue_wait,
                std::time::Duration::from_millis,
            ),
            max_replicas: file.max_replicas.unwrap_or(defaults.max_replicas),
            replica_idle: file
                .replica_idle_ms
                .map_or(defaults.replica_idle, std::time::Duration::from_millis),
            limits,
            memory_budget: file
                .memory_budget_mb
                .map_or(defaults.memory_budget, |mb| mb << 20),
            v8: v8_settings(),
            warm_on_deploy: file.warm_on_deploy.unwrap_or(defaults.warm_on_deploy),
        },
        apps,
        admin: None,
        http1: Default::default(),
        edge: EdgeConfig {
            trusted_proxies,
            access_log,
        },
        store: None,
        log_tail: None,
        metrics_max_apps: file
            .metrics_max_apps
            .unwrap_or(isopod_server::DEFAULT_METRICS_MAX_APPS),
        snapshotter: snapshotter(file.snapshots)?,
        storage: Some(Arc::new(storage)),
    };
    apply_env(&mut config)?;
    let admin_listen = env_parsed("ISOPOD_ADMIN_LISTEN")?.or(file.admin_listen);
    let admin_token = std::env::var("ISOPOD_ADMIN_TOKEN")
        .ok()
        .or(file.admin_token);
    let mut tokens: Vec<(String, String)> = admin_token
        .into_iter()
        .map(|token| ("admin".to_string(), token))
        .chain(file.admin_tokens.into_iter().map(|t| (t.name, t.token)))
        .collect();
    for (name, token) in &tokens {
        if token.len() < 16 {
            return Err(anyhow!(
                "admin token '{name}': a token must be at least 16 characters"
            ));
        }
    }
    tokens.dedup_by(|a, b| a.1 == b.1);
    config.admin = match admin_listen {
        None => None,
        Some(_) if tokens.is_empty() => {
            return Err(anyhow!(
                "admin_listen is set but no admin token: set admin_token, admin_tokens or ISOPOD_ADMIN_TOKEN"
            ))
        }
        Some(listen) => Some(AdminConfig { listen, tokens }),
    };
    Ok((config, settings))
}

/// A config file's syntax or type error as one line: `FILE:LINE:COLUMN:
/// message`, the message naming the key.
fn invalid(path: &Path, text: &str, error: &toml::de::Error) -> anyhow::Error {
    let message = error.message().trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            anyhow!("{}:{line}:{column}: {message}", path.display())
        }
        None => anyhow!("{}: {message}", path.display()),
    }
}

/// `KEY=VALUE` pairs (from the command line) as limit overrides; keys are
/// those of a manifest's `limits` table, values integers.
pub(crate) fn limit_overrides(pairs: &[(String, String)]) -> anyhow::Result<LimitOverrides> {
    let mut table = toml::Table::new();
    for (key, value) in pairs {
        let value: i64 = value
            .parse()
            .map_err(|_| anyhow!("--limit {key}={value}: the value must be an integer"))?;
        table.insert(key.clone(), toml::Value::Integer(value));
    }
    LimitOverrides::deserialize(toml::Value::Table(table)).context("--limit")
}

/// The process's default limits: the built-in defaults, then the config
/// file's `[limits]`, then `ISOLATE_HEAP_INITIAL_MB` / `ISOLATE_HEAP_MAX_MB`.
pub(crate) fn process_limits(file: &LimitOverrides) -> anyhow::Result<Limits> {
    let mut overrides = file.clone();
    if let Some(initial) = env_parsed("ISOLATE_HEAP_INITIAL_MB")? {
        overrides.heap_initial_mb = Some(initial);
    }
    if let Some(max) = env_parsed("ISOLATE_HEAP_MAX_MB")? {
        overrides.heap_max_mb = Some(max);
    }
    overrides
        .over(&Limits::default())
        .context("the process's default limits")
}

fn manifest(
    mut entry: toml::Table,
    base: &Path,
    defaults: &Limits,
    storage: &Storage,
) -> anyhow::Result<AppManifest> {
    let identity: toml::Table = ["name", "bundle", "port"]
        .into_iter()
        .filter_map(|key| entry.remove(key).map(|value| (key.to_string(), value)))
        .collect();
    let AppIdentity { name, bundle, port } =
        AppIdentity::deserialize(toml::Value::Table(identity)).context("an [[apps]] entry")?;
    let settings = AppSettings::deserialize(toml::Value::Table(entry))
        .with_context(|| format!("app '{name}'"))?;
    let bundle = Bundle::from_file(&base.join(&bundle)).with_context(|| format!("app '{name}'"))?;
    let mut manifest = settings.into_manifest(&name, bundle, defaults, Some(storage))?;
    manifest.port = port;
    Ok(manifest)
}

/// One worker thread per core.
pub(crate) fn default_threads() -> usize {
    PoolConfig::default().threads
}

fn env_parsed<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map(Some)
            .map_err(|e| anyhow!("{name}={value}: {e}")),
        Err(_) => Ok(None),
    }
}

/// `ISOPOD_ACCESS_LOG_SAMPLE` (0 to 1; 0 switches the access log off),
/// which overrides `access_log` and `access_log_sample`.
pub(crate) fn access_log_from_env() -> anyhow::Result<Option<AccessLog>> {
    match env_parsed::<f64>("ISOPOD_ACCESS_LOG_SAMPLE")? {
        Some(sample) if (0.0..=1.0).contains(&sample) => Ok(Some(AccessLog { sample })),
        Some(sample) => Err(anyhow!(
            "ISOPOD_ACCESS_LOG_SAMPLE={sample}: not between 0 and 1"
        )),
        None => Ok(None),
    }
}

/// How version snapshots are made: by this very binary, run as
/// `isopod __snapshot` (so a snapshot always comes from the build that reads
/// it); `None` when `ISOPOD_SNAPSHOTS=off` or the config's `snapshots =
/// false` (the environment wins) turns them off.
pub(crate) fn snapshotter(
    configured: Option<bool>,
) -> anyhow::Result<Option<isopod_runtime::Snapshotter>> {
    let on = match std::env::var("ISOPOD_SNAPSHOTS").ok().as_deref() {
        Some("off") => false,
        Some("on") => true,
        Some(other) => return Err(anyhow!("ISOPOD_SNAPSHOTS={other}: expected on or off")),
        None => configured.unwrap_or(true),
    };
    if !on {
        return Ok(None);
    }
    let this = std::env::current_exe().context("finding isopod's own binary for snapshots")?;
    Ok(Some(isopod_runtime::Snapshotter::new(
        this,
        vec!["__snapshot".into()],
    )))
}

/// V8's process-wide settings, from the environment (for diagnosis):
/// `ISOPOD_V8_FLAGS` and `ISOPOD_CODE_CACHE=off`.
pub(crate) fn v8_settings() -> isopod_runtime::V8Settings {
    isopod_runtime::V8Settings {
        flags: std::env::var("ISOPOD_V8_FLAGS").unwrap_or_default(),
        code_cache: std::env::var("ISOPOD_CODE_CACHE").map_or(true, |value| value != "off"),
    }
}

/// Environment variables override config keys.
fn apply_env(config: &mut ServerConfig) -> anyhow::Result<()> {
    if let Some(listen) = env_parsed("ISOPOD_LISTEN")? {
        config.listen = listen;
    }
    if let Some(access_log) = access_log_from_env()? {
        config.edge.access_log = access_log;
    }
    if let Some(threads) = env_parsed("ISOPOD_THREADS")? {
        config.pool.threads = threads;
    }
    if let Some(max) = env_parsed("ISOLATE_POOL_SIZE")? {
        config.pool.max_instances = max;
    }
    if let Some(mb) = env_parsed::<u64>("ISOPOD_MEMORY_BUDGET_MB")? {
        config.pool.memory_budget = mb << 20;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use isopod_server::{ExecutionMode, HostPattern};

    #[test]
    fn a_config_file_describes_apps_and_routes() {
        let dir = std::env::temp_dir().join(format!("isopod-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.js"),
            "export default { fetch() { return new Response('a'); } };",
        )
        .unwrap();
        std::fs::write(
            dir.join("isopod.toml"),
            r#"
listen = "127.0.0.1:0"
threads = 2
max_instances = 7

[[apps]]
name = "a"
bundle = "a.js"
mode = "isolate-per-request"
port = 9999
routes = [{ host = "*.example.com", path = "/api" }]
vars = { K = "v" }
allow_net = ["127.0.0.1:9000", "10.1.0.0/16", "api.internal"]
"#,
        )
        .unwrap();
        let (config, _) = load(&dir.join("isopod.toml"), Some(dir.join("data"))).unwrap();
        assert_eq!((config.pool.threads, config.pool.max_instances), (2, 7));
        let app = &config.apps[0];
        assert_eq!(app.mode, ExecutionMode::IsolatePerRequest);
        assert_eq!(app.port, Some(9999));
        assert_eq!(
            app.routes[0].host,
            Some(HostPattern::Wildcard(".example.com".into()))
        );
        assert_eq!(app.config.vars, vec![("K".to_string(), "v".to_string())]);
        assert_eq!(
            app.config.net.allowed(),
            ["127.0.0.1:9000", "10.1.0.0/16", "api.internal"]
        );

        std::fs::write(
            dir.join("bad-net.toml"),
            "[[apps]]\nname = \"a\"\nbundle = \"a.js\"\nallow_net = [\"http://x\"]\n",
        )
        .unwrap();
        let error = load(&dir.join("bad-net.toml"), Some(dir.join("data"))).unwrap_err();
        assert!(
            format!("{error:#}").contains("invalid allow_net entry 'http://x'"),
            "{error:#}"
        );

        std::fs::write(
            dir.join("bad.toml"),
            "[[apps]]\nname = \"a\"\nbundle = \"a.js\"\nroute = []\n",
        )
        .unwrap();
        let error = load(&dir.join("bad.toml"), Some(dir.join("data"))).unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `route`"),
            "{error:#}"
        );
    }
}
