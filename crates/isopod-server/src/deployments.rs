//! Making a version of an app live: recorded in the persistent registry
//! first (when the server keeps one), then swapped into the in-memory
//! [`Registry`] that requests read, its own port opened or moved.
//!
//! Invariants:
//! - One change at a time: a deploy, a rollback, a change of variables and
//!   a removal each hold [`Deployments`]' lock from their first check to
//!   their swap, so two changes of one app cannot record in one order and
//!   swap in the other.
//! - Record, then swap. A version is served only once the registry on disk
//!   names it active, so a restart serves what was served before it; a
//!   failed write changes nothing that requests see.
//! - Everything that can refuse a change (the manifest, the bundle, the
//!   port) is checked before the record is written.

use std::sync::Arc;

use isopod_pool::{AppVersion, Pool};
use isopod_runtime::{Bundle, Limits};
use isopod_store::{NewVersion, Origin, Store, StoredVersion, VersionRecord};
use tokio::sync::Mutex;

use crate::accept::{serve_own_port, Serving};
use crate::app_metrics::AppMetricsSet;
use crate::deploy_check::check_bundle;
use crate::log_tail::LogTail;
use crate::manifest::{AppManifest, AppSettings};
use crate::ports::OwnPorts;
use crate::registry::{Deployed, Registry, VersionInfo};
use crate::snapshots::Snapshots;
use isopod_store::Storage;

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChangeError {
    /// The caller's mistake (400): a bad manifest or bundle, a taken port.
    #[error("{0}")]
    Refused(String),
    /// No such app or version (404).
    #[error("{0}")]
    NotFound(String),
    /// The change makes no sense in the app's state (409): a rollback with
    /// nothing before the active version.
    #[error("{0}")]
    Conflict(String),
    /// The registry could not be read or written (500); nothing changed.
    #[error("the registry: {0}")]
    Store(String),
}

impl From<isopod_store::StoreError> for ChangeError {
    fn from(error: isopod_store::StoreError) -> ChangeError {
        use isopod_store::StoreError;
        match error {
            StoreError::NoSuchApp(_) | StoreError::NoSuchVersion { .. } => {
                ChangeError::NotFound(error.to_string())
            }
            StoreError::NothingToRollBackTo(_) => ChangeError::Conflict(error.to_string()),
            other => ChangeError::Store(other.to_string()),
        }
    }
}

/// Everything a change of the deployed apps touches.
pub(crate) struct Deployments {
    registry: Arc<Registry>,
    pool: Arc<Pool>,
    ports: Arc<OwnPorts>,
    /// The persistent registry, if the server keeps one.
    pub(crate) store: Option<Arc<Store>>,
    metrics: Arc<AppMetricsSet>,
    log_tail: Option<Arc<LogTail>>,
    /// The process's default limits, which a manifest's `limits` override.
    default_limits: Limits,
    /// What an app's own port, opened by a change, is served with.
    serving: Arc<Serving>,
    /// Held by each change from its first check to its swap.
    lock: Mutex<()>,
    /// Each new version's snapshot.
    snapshots: Arc<Snapshots>,
    /// Where apps' KV namespaces and D1 databases live, if the server has
    /// a data directory.
    pub(crate) storage: Option<Arc<Storage>>,
}

/// A change made: the version now live, and the one it replaced.
pub(crate) struct Changed {
    pub(crate) now: Arc<Deployed>,
    pub(crate) before: Option<Arc<Deployed>>,
}

impl Deployments {
    pub(crate) fn new(
        pool: Arc<Pool>,
        ports: Arc<OwnPorts>,
        metrics: Arc<AppMetricsSet>,
        log_tail: Option<Arc<LogTail>>,
        default_limits: Limits,
        serving: Arc<Serving>,
        // Where each version's snapshot comes from; its registry is the one
        // changes are recorded in.
        snapshots: Arc<Snapshots>,
    ) -> Deployments {
        Deployments {
            registry: serving.registry.clone(),
            pool,
            ports,
            store: snapshots.store().cloned(),
            metrics,
            log_tail,
            default_limits,
            serving,
            lock: Mutex::new(()),
            snapshots,
            storage: None,
        }
    }

    /// Opens apps' bindings in `storage` (without, a binding is refused).
    pub(crate) fn with_storage(mut self, storage: Option<Arc<Storage>>) -> Deployments {
        self.storage = storage;
        self
    }

    /// Checks `settings` and `source` as app `name`, records them and makes
    /// them live. `port` of `None` keeps the app's current port.
    pub(crate) async fn deploy(
        &self,
        name: &str,
        source: String,
        settings: AppSettings,
        port: Option<Option<u16>>,
        deployed_by: &str,
    ) -> Result<Changed, ChangeError> {
        let _turn = self.lock.lock().await;
        let previous = self.registry.snapshot().app(name).cloned();
        let port = port.unwrap_or_else(|| previous.as_ref().and_then(|p| p.port));
        let manifest = self.checked_manifest(name, source, settings, port).await?;
        let recording = recording(&manifest, deployed_by, Origin::Api);
        self.record_and_swap(manifest, previous, recording).await
    }

    /// Replaces the app's variables and secrets named in `vars` and
    /// `secrets` (a `None` value removes one) as a new version.
    pub(crate) async fn set_vars(
        &self,
        name: &str,
        vars: Vec<(String, Option<String>)>,
        secrets: Vec<(String, Option<String>)>,
        deployed_by: &str,
    ) -> Result<Changed, ChangeError> {
        let _turn = self.lock.lock().await;
        let previous = self
            .registry
            .snapshot()
            .app(name)
            .cloned()
            .ok_or_else(|| ChangeError::NotFound(format!("no app named '{name}'")))?;
        let mut settings = previous.declared.clone();
        for (key, value) in vars {
            settings.secrets.remove(&key);
            match value {
                Some(value) => settings.vars.insert(key, value),
                None => settings.vars.remove(&key),
            };
        }
        for (key, value) in secrets {
            settings.vars.remove(&key);
            match value {
                Some(value) => settings.secrets.insert(key, value),
                None => settings.secrets.remove(&key),
            };
        }
        let mut manifest = settings
            .into_manifest(
                name,
                previous.version.bundle.clone(),
                &self.default_limits,
                self.storage.as_deref(),
            )
            .map_err(|e| ChangeError::Refused(e.to_string()))?;
        manifest.port = previous.port;
        let recording = recording(&manifest, deployed_by, Origin::Vars);
        self.record_and_swap(manifest, Some(previous), recording)
            .await
    }

    /// Makes version `to` of app `name` (by default, the one before the
    /// active one) live again, as a new version.
    pub(crate) async fn rollback(
        &self,
        name: &str,
        to: Option<u64>,
        deployed_by: &str,
    ) -> Result<Changed, ChangeError> {
        let _turn = self.lock.lock().await;
        let store = self.store.clone().ok_or_else(|| {
            ChangeError::Refused("this server keeps no registry (no data directory)".into())
        })?;
        let previous = self.registry.snapshot().app(name).cloned();
        let app = name.to_string();
        let target = blocking(move || store.rollback_target(&app, to)).await??;
        let manifest = self.stored_manifest(&target)?;
        let (app, from, by) = (
            name.to_string(),
            target.record.number,
            deployed_by.to_string(),
        );
        let recording: Recording =
            Box::new(move |store: &Store| store.rollback(&app, Some(from), &by));
        self.record_and_swap(manifest, previous, recording).await
    }

    /// Removes app `name`: from the registry on disk, then from service.
    pub(crate) async fn remove(&self, name: &str) -> Result<Arc<Deployed>, ChangeError> {
        let _turn = self.lock.lock().await;
        if self.registry.snapshot().app(name).is_none() {
            return Err(ChangeError::NotFound(format!("no app named '{name}'")));
        }
        if let Some(store) = self.store.clone() {
            let app = name.to_string();
            blocking(move || store.remove_app(&app)).await??;
        }
        let removed = self
            .registry
            .remove(name)
            .ok_or_else(|| ChangeError::NotFound(format!("no app named '{name}'")))?;
        if let Some(port) = removed.port {
            self.ports.close(port).await;
        }
        self.pool.removed(name);
        if let Some(tail) = &self.log_tail {
            tail.forget(name);
        }
        Ok(removed)
    }

    /// How many distinct version snapshots live versions hold in memory,
    /// and their bytes (versions with one cache key share one).
    pub(crate) fn snapshots_held(&self) -> (usize, usize) {
        self.snapshots.held()
    }

    /// The manifest of a stored version, laid over today's defaults.
    pub(crate) fn stored_manifest(
        &self,
        stored: &StoredVersion,
    ) -> Result<AppManifest, ChangeError> {
        manifest_from_record(stored, &self.default_limits, self.storage.as_deref())
            .map_err(ChangeError::Store)
    }

    async fn checked_manifest(
        &self,
        name: &str,
        source: String,
        settings: AppSettings,
        port: Option<u16>,
    ) -> Result<AppManifest, ChangeError> {
        let bundle = Bundle::from_source(&format!("{name}.js"), source);
        let mut manifest = settings
            .into_manifest(name, bundle, &self.default_limits, self.storage.as_deref())
            .map_err(|e| ChangeError::Refused(e.to_string()))?;
        manifest.port = port;
        let (config, bundle) = (manifest.config.clone(), manifest.bundle.clone());
        match tokio::task::spawn_blocking(move || check_bundle(&config, &bundle)).await {
            Ok(Ok(())) => Ok(manifest),
            Ok(Err(refused)) => Err(ChangeError::Refused(refused.to_string())),
            Err(_) => Err(ChangeError::Store("checking the bundle failed".into())),
        }
    }

    /// Binds the manifest's port if it is new, records the version, swaps
    /// it in, and only then closes a port the app left.
    async fn record_and_swap(
        &self,
        manifest: AppManifest,
        previous: Option<Arc<Deployed>>,
        recording: Recording,
    ) -> Result<Changed, ChangeError> {
        let name = manifest.config.name.clone();
        let port = manifest.port;
        let previous_port = previous.as_ref().and_then(|p| p.port);
        let snapshot = self
            .snapshots
            .prepare(&manifest.bundle, &manifest.config)
            .await;
        let opened = match port {
            Some(port) if Some(port) != previous_port => Some(
                self.ports
                    .bind(&name, port, self.pool.workers())
                    .map_err(|refused| ChangeError::Refused(format!("app '{name}': {refused}")))?,
            ),
            _ => None,
        };
        let record = match &self.store {
            Some(store) => {
                let store = store.clone();
                let written = blocking(move || recording(&store)).await;
                match written {
                    Ok(Ok(record)) => Some(record),
                    Ok(Err(error)) => {
                        if let (Some(_), Some(port)) = (opened, port) {
                            self.ports.close(port).await;
                        }
                        return Err(error.into());
                    }
                    Err(error) => return Err(error),
                }
            }
            None => None,
        };
        let deployed = self.deployed(manifest, record.as_ref());
        let version = deployed.version.clone();
        version.set_snapshot(snapshot.outcome);
        let now = Arc::new(deployed);
        let before = self.registry.deploy_arc(now.clone());
        if let Some(bound) = opened {
            serve_own_port(&self.pool, &self.serving, &name, bound);
            tracing::info!(app = %name, port = ?port, "listening on the app's own port");
        }
        if let Some(old) = previous_port.filter(|old| Some(*old) != port) {
            self.ports.close(old).await;
        }
        self.pool.deployed(&version);
        if snapshot.fresh {
            self.snapshots.keep(&version).await;
        }
        tracing::info!(
            app = %name,
            version = %version.id,
            number = record.as_ref().map(|r| r.number),
            deployed_by = record.as_ref().map(|r| r.deployed_by.as_str()),
            origin = record.as_ref().map(|r| r.origin.as_str()),
            "deployed"
        );
        Ok(Changed { now, before })
    }

    /// The in-memory form of a manifest about to go live.
    pub(crate) fn deployed(
        &self,
        manifest: AppManifest,
        record: Option<&VersionRecord>,
    ) -> Deployed {
        let metrics = self.metrics.for_app(&manifest.config.name);
        deployed_from(manifest, record, metrics)
    }
}

/// How a change is written to the registry, run on a blocking thread.
type Recording = Box<dyn FnOnce(&Store) -> Result<VersionRecord, isopod_store::StoreError> + Send>;

/// Records `manifest` as a new version made by `deployed_by`.
fn recording(manifest: &AppManifest, deployed_by: &str, origin: Origin) -> Recording {
    let app = manifest.config.name.to_string();
    let source = manifest.bundle.source().clone();
    let declaration = manifest.declaration();
    let deployed_by = deployed_by.to_string();
    Box::new(move |store: &Store| {
        store.deploy(
            &app,
            NewVersion {
                source: source.as_bytes(),
                manifest: &declaration,
                deployed_by: &deployed_by,
                origin,
            },
        )
    })
}

/// `manifest` as a [`Deployed`], counted in `metrics`.
pub(crate) fn deployed_from(
    mut manifest: AppManifest,
    record: Option<&VersionRecord>,
    metrics: Arc<crate::app_metrics::AppMetrics>,
) -> Deployed {
    manifest.config.fetches = metrics.fetches.clone();
    let version = AppVersion::new(manifest.config, manifest.bundle, manifest.mode);
    let mut deployed = Deployed::new(version, manifest.routes, manifest.port, metrics);
    deployed.secret_names = manifest.secret_names;
    deployed.declared = manifest.declared;
    deployed.record = record.map(|record| VersionInfo {
        number: record.number,
        deployed_at_ms: record.deployed_at_ms,
        deployed_by: record.deployed_by.clone(),
        origin: record.origin.as_str(),
        bundle_sha256: record.bundle_sha256.clone(),
    });
    deployed
}

/// The manifest a stored version describes: its declaration laid over
/// `defaults`, with its bundle.
pub(crate) fn manifest_from_record(
    stored: &StoredVersion,
    defaults: &Limits,
    storage: Option<&Storage>,
) -> Result<AppManifest, String> {
    let record = &stored.record;
    let mut declaration = record.manifest.clone();
    let port = match &mut declaration {
        serde_json::Value::Object(fields) => fields.remove("port"),
        _ => None,
    };
    let port = match port {
        None | Some(serde_json::Value::Null) => None,
        Some(port) => Some(
            port.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| {
                    format!(
                        "version {} of '{}' has a bad port",
                        record.number, record.app
                    )
                })?,
        ),
    };
    let settings: AppSettings = serde_json::from_value(declaration)
        .map_err(|e| format!("version {} of '{}': {e}", record.number, record.app))?;
    let source = String::from_utf8(stored.source.clone())
        .map_err(|_| format!("version {} of '{}' is not UTF-8", record.number, record.app))?;
    let bundle = Bundle::from_source(&format!("{}.js", record.app), source);
    let mut manifest = settings
        .into_manifest(&record.app, bundle, defaults, storage)
        .map_err(|e| e.to_string())?;
    manifest.port = port;
    Ok(manifest)
}

/// Runs registry I/O off the admin thread's runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ChangeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ChangeError::Store("a registry task failed".into()))
}
