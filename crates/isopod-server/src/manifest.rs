//! An app's settings as an operator writes them, in `isopod.toml` or in the
//! body of an admin `PUT /apps/NAME`, and their one conversion into an
//! [`AppManifest`]: both sources go through here, so they accept the same
//! keys and refuse the same mistakes with the same words.

use std::collections::BTreeMap;
use std::sync::Arc;

use isopod_pool::ExecutionMode;
use isopod_runtime::{AppConfig, Bundle, LimitOverrides, Limits, NetPolicy, SnapshotPolicy};
use isopod_store::Storage;
use serde::{Deserialize, Serialize};

use crate::routing::{HostPattern, Route};

/// An app to serve, as a manifest describes it.
#[derive(Debug, Clone)]
pub struct AppManifest {
    /// Name, variables, network policy.
    pub config: AppConfig,
    /// The code.
    pub bundle: Bundle,
    /// Pooled (default) or isolate-per-request.
    pub mode: ExecutionMode,
    /// Where it answers; none means `NAME.localhost`.
    pub routes: Vec<Route>,
    /// A listen port of its own (same address as the main listener).
    pub port: Option<u16>,
    /// The names of the secrets among `config.vars`.
    pub secret_names: Vec<String>,
    /// The settings as written: what the registry keeps, so that a restart
    /// lays them over the process's defaults of that time.
    pub declared: AppSettings,
}

impl AppManifest {
    /// A pooled app with no routes of its own.
    pub fn new(config: AppConfig, bundle: Bundle) -> AppManifest {
        AppManifest {
            config,
            bundle,
            mode: ExecutionMode::Pooled,
            routes: Vec::new(),
            port: None,
            secret_names: Vec::new(),
            declared: AppSettings::default(),
        }
    }

    /// What the registry keeps of this manifest besides the bundle: its
    /// settings as written and its own port, as JSON.
    pub fn declaration(&self) -> serde_json::Value {
        let mut declaration = serde_json::to_value(&self.declared).unwrap_or_default();
        if let serde_json::Value::Object(fields) = &mut declaration {
            fields.insert("port".into(), self.port.into());
        }
        declaration
    }
}

/// What a manifest may say about an app besides its name, its bundle and
/// its own port (which each source carries in its own way).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// Where it answers; none means `NAME.localhost`.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// The handler's `env`.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// More of the handler's `env`, whose values are never shown by the
    /// admin API or written to a log.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Pooled (default) or isolate-per-request.
    #[serde(default)]
    pub mode: ExecutionMode,
    /// Overrides of the process's default limits.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// Non-public hosts and ranges the app's `fetch` may reach.
    #[serde(default)]
    pub allow_net: Vec<String>,
    /// Whether its versions get startup snapshots: `on` (default), `off`,
    /// or `share-random` (top-level `Math.random()` allowed). Left out of
    /// the declaration when default, so older declarations keep their
    /// digest.
    #[serde(default, skip_serializing_if = "is_default_policy")]
    pub snapshot: SnapshotPolicy,
    /// Workers KV namespaces on `env`. Left out of the declaration when
    /// none, as are D1 databases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kv: Vec<KvBindingSpec>,
    /// D1 databases on `env`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub d1: Vec<D1BindingSpec>,
}

/// A KV binding as written: `{ binding = "CACHE", namespace = "shop-cache",
/// backend = "redis" }`. The namespace defaults to the binding's name, the
/// backend to the data directory's SQLite.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KvBindingSpec {
    /// The name on `env`.
    pub binding: String,
    /// The namespace it reaches; apps naming the same one share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `sqlite` (default) or `redis` (needs the top-level `redis_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<KvBackendName>,
}

/// Where a KV namespace lives, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvBackendName {
    /// The data directory's SQLite file.
    Sqlite,
    /// The Redis server of `redis_url`.
    Redis,
}

/// A D1 binding as written: `{ binding = "DB", database = "shop" }`. The
/// database defaults to the binding's name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct D1BindingSpec {
    /// The name on `env`.
    pub binding: String,
    /// The database it reaches; apps naming the same one share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

fn is_default_policy(policy: &SnapshotPolicy) -> bool {
    *policy == SnapshotPolicy::default()
}

/// A route as written: a host pattern and/or a path prefix.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// An exact host, or `*.domain`.
    pub host: Option<String>,
    /// A path prefix.
    pub path: Option<String>,
}

/// A manifest that cannot be served, and why.
#[derive(Debug, thiserror::Error)]
#[error("app '{app}': {reason}")]
pub struct ManifestError {
    app: String,
    reason: String,
}

impl ManifestError {
    fn new(app: &str, reason: impl ToString) -> ManifestError {
        ManifestError {
            app: app.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// An app name is letters, digits, `-` or `_` (it becomes a host label).
pub fn check_app_name(name: &str) -> Result<(), ManifestError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ManifestError::new(
            name,
            "an app name is letters, digits, '-' or '_'",
        ))
    }
}

impl AppSettings {
    /// These settings' storage bindings, opened in `storage`; what
    /// [`AppSettings::into_manifest`] gives the app's config.
    pub fn bindings(
        &self,
        name: &str,
        storage: Option<&Storage>,
    ) -> Result<isopod_bindings::Bindings, ManifestError> {
        crate::bindings::resolve(self, storage).map_err(|reason| ManifestError::new(name, reason))
    }

    /// The app `name` running `bundle` with these settings, its limits laid
    /// over `defaults`, its bindings opened in `storage` (needed only when
    /// it has some). Its own port, if any, is the caller's to set.
    pub fn into_manifest(
        self,
        name: &str,
        bundle: Bundle,
        defaults: &Limits,
        storage: Option<&Storage>,
    ) -> Result<AppManifest, ManifestError> {
        check_app_name(name)?;
        let bindings = self.bindings(name, storage)?;
        let declared = self.clone();
        if let Some(both) = self.secrets.keys().find(|key| self.vars.contains_key(*key)) {
            return Err(ManifestError::new(
                name,
                format!("'{both}' is both a variable and a secret"),
            ));
        }
        let secret_names: Vec<String> = self.secrets.keys().cloned().collect();
        let routes = self
            .routes
            .into_iter()
            .map(|route| {
                Ok(Route {
                    host: route
                        .host
                        .as_deref()
                        .map(HostPattern::parse)
                        .transpose()
                        .map_err(|reason| ManifestError::new(name, reason))?,
                    path: route.path,
                })
            })
            .collect::<Result<Vec<_>, ManifestError>>()?;
        let net = NetPolicy::allowing(&self.allow_net).map_err(|e| ManifestError::new(name, e))?;
        let limits = self
            .limits
            .over(defaults)
            .map_err(|e| ManifestError::new(name, e))?;
        Ok(AppManifest {
            config: AppConfig {
                name: Arc::from(name),
                vars: self.vars.into_iter().chain(self.secrets).collect(),
                net,
                limits,
                fetches: Default::default(),
                snapshot: self.snapshot,
                bindings,
            },
            bundle,
            mode: self.mode,
            routes,
            port: None,
            secret_names,
            declared,
        })
    }
}
