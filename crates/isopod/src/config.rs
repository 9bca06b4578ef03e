//! `isopod.toml`: the server's listen address, pool settings and apps.
//!
//! Every environment variable isopod reads overrides the config key it names
//! (see the table in README.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use isopod_runtime::{Bundle, LimitOverrides, Limits};
use isopod_server::{AdminConfig, AppManifest, AppSettings, PoolConfig, ServerConfig};
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
    memory_budget_mb: Option<u64>,
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

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// Reads `path` and applies the environment overrides.
pub(crate) fn load(path: &Path) -> anyhow::Result<ServerConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: ConfigFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid config", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let limits = process_limits(&file.limits)?;
    let mut apps = Vec::new();
    for app in file.apps {
        apps.push(manifest(app, base, &limits)?);
    }
    let defaults = PoolConfig::default();
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
        },
        apps,
        admin: None,
        http1: Default::default(),
    };
    apply_env(&mut config)?;
    let admin_listen = env_parsed("ISOPOD_ADMIN_LISTEN")?.or(file.admin_listen);
    let admin_token = std::env::var("ISOPOD_ADMIN_TOKEN")
        .ok()
        .or(file.admin_token);
    config.admin = match (admin_listen, admin_token) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(anyhow!(
                "admin_listen is set but no admin token: set admin_token or ISOPOD_ADMIN_TOKEN"
            ))
        }
        (Some(_), Some(token)) if token.len() < 16 => {
            return Err(anyhow!("the admin token must be at least 16 characters"))
        }
        (Some(listen), Some(token)) => Some(AdminConfig { listen, token }),
    };
    Ok(config)
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

fn manifest(mut entry: toml::Table, base: &Path, defaults: &Limits) -> anyhow::Result<AppManifest> {
    let identity: toml::Table = ["name", "bundle", "port"]
        .into_iter()
        .filter_map(|key| entry.remove(key).map(|value| (key.to_string(), value)))
        .collect();
    let AppIdentity { name, bundle, port } =
        AppIdentity::deserialize(toml::Value::Table(identity)).context("an [[apps]] entry")?;
    let settings = AppSettings::deserialize(toml::Value::Table(entry))
        .with_context(|| format!("app '{name}'"))?;
    let bundle = Bundle::from_file(&base.join(&bundle)).with_context(|| format!("app '{name}'"))?;
    let mut manifest = settings.into_manifest(&name, bundle, defaults)?;
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
        let config = load(&dir.join("isopod.toml")).unwrap();
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
        let error = load(&dir.join("bad-net.toml")).unwrap_err();
        assert!(
            format!("{error:#}").contains("invalid allow_net entry 'http://x'"),
            "{error:#}"
        );

        std::fs::write(
            dir.join("bad.toml"),
            "[[apps]]\nname = \"a\"\nbundle = \"a.js\"\nroute = []\n",
        )
        .unwrap();
        let error = load(&dir.join("bad.toml")).unwrap_err();
        assert!(
            format!("{error:#}").contains("unknown field `route`"),
            "{error:#}"
        );
    }
}
