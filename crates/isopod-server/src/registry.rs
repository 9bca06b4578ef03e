//! The deployed apps and their routes, shared by every worker thread.
//!
//! A deploy builds a new snapshot and swaps it in, so a request sees either
//! the old set of versions or the new one, never a mix. Each listener of a
//! worker thread keeps the snapshot it last saw ([`LocalSnapshot`]) and
//! takes the lock again only when the registry's generation has moved: a
//! request costs one read of a counter that only deploys write, rather
//! than a lock and a reference count shared by every thread.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use isopod_pool::AppVersion;
use rustc_hash::FxBuildHasher;

use crate::routing::{Route, RouteTable};

/// One app as deployed: its current version and where it answers.
#[derive(Debug)]
pub struct Deployed {
    /// The version new requests go to.
    pub version: Arc<AppVersion>,
    /// Its routes (none: `NAME.localhost`).
    pub routes: Vec<Route>,
    /// A listen port of its own, if any.
    pub port: Option<u16>,
    /// How many of its requests are served at once.
    pub admission: crate::admission::Admission,
    /// The names of its secrets (their values are in its `env`, never
    /// shown).
    pub secret_names: Vec<String>,
    /// The registry's record of this version; `None` when the server keeps
    /// no registry (`isopod run`).
    pub record: Option<VersionInfo>,
    /// Its settings as written, which a change of variables starts from.
    pub declared: crate::manifest::AppSettings,
    /// Where its requests are counted.
    pub(crate) metrics: Arc<crate::app_metrics::AppMetrics>,
    /// The version's id as text, for access records.
    pub(crate) version_label: Box<str>,
}

/// What the persistent registry says about a deployed version.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    /// Its number among the app's versions (1, 2, …).
    pub number: u64,
    /// When it was recorded, in ms since the Unix epoch.
    pub deployed_at_ms: u64,
    /// Who recorded it: an admin token's name, or `config`.
    pub deployed_by: String,
    /// How: `api`, `config`, `rollback` or `vars`.
    pub origin: &'static str,
    /// The bundle's SHA-256, in hex.
    pub bundle_sha256: String,
}

impl Deployed {
    /// A deployment of `version`, its admission sized by its limits.
    pub(crate) fn new(
        version: Arc<AppVersion>,
        routes: Vec<Route>,
        port: Option<u16>,
        metrics: Arc<crate::app_metrics::AppMetrics>,
    ) -> Deployed {
        let admission =
            crate::admission::Admission::new(version.config.limits.max_concurrent_requests);
        let version_label = version.id.to_string().into();
        Deployed {
            version,
            routes,
            port,
            admission,
            secret_names: Vec::new(),
            record: None,
            declared: Default::default(),
            version_label,
            metrics,
        }
    }
}

/// A consistent view of every deployed app.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Looked up on every request: hashed with Fx, not SipHash (the names
    /// are the operator's, and no tenant chooses the keys).
    apps: AppMap,
    routes: RouteTable,
}

impl Snapshot {
    /// The app a request to `host` and `path` is for.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Deployed>> {
        self.routes
            .lookup(host, path)
            .and_then(|app| self.apps.get(app))
    }

    /// An app by name.
    pub fn app(&self, name: &str) -> Option<&Arc<Deployed>> {
        self.apps.get(name)
    }

    /// Every app, by name.
    pub fn apps(&self) -> impl Iterator<Item = &Arc<Deployed>> {
        self.apps.values()
    }
}

type AppMap = HashMap<Arc<str>, Arc<Deployed>, FxBuildHasher>;

/// The deployed apps.
#[derive(Debug, Default)]
pub struct Registry {
    current: RwLock<Arc<Snapshot>>,
    /// Bumped, under the write lock, after every swap of `current`.
    generation: AtomicU64,
}

impl Registry {
    /// The current view.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Deploys (or replaces) an app; returns the version it replaced.
    pub fn deploy(&self, deployed: Deployed) -> Option<Arc<Deployed>> {
        self.deploy_arc(Arc::new(deployed))
    }

    /// [`Registry::deploy`] of a shared deployment.
    pub fn deploy_arc(&self, deployed: Arc<Deployed>) -> Option<Arc<Deployed>> {
        let name = deployed.version.config.name.clone();
        self.update(|apps| apps.insert(name, deployed))
    }

    /// Removes an app; returns it if it was deployed.
    pub fn remove(&self, name: &str) -> Option<Arc<Deployed>> {
        self.update(|apps| apps.remove(name))
    }

    fn update<R>(&self, change: impl FnOnce(&mut AppMap) -> R) -> R {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut apps = current.apps.clone();
        let result = change(&mut apps);
        let mut routes = RouteTable::default();
        let mut names: Vec<_> = apps.keys().cloned().collect();
        names.sort();
        for name in &names {
            routes.add(name, &apps[name].routes);
        }
        *current = Arc::new(Snapshot { apps, routes });
        self.generation.fetch_add(1, Ordering::Release);
        result
    }
}

/// One thread's copy of the registry's current snapshot, refreshed when a
/// deploy has changed it. `!Sync`: each listener of each thread has its own.
#[derive(Debug)]
pub(crate) struct LocalSnapshot {
    registry: Arc<Registry>,
    /// The registry generation `snapshot` was taken at.
    seen: Cell<u64>,
    snapshot: RefCell<Arc<Snapshot>>,
}

impl LocalSnapshot {
    /// A copy of `registry`'s current snapshot.
    pub(crate) fn new(registry: Arc<Registry>) -> LocalSnapshot {
        let seen = registry.generation.load(Ordering::Acquire);
        let snapshot = RefCell::new(registry.snapshot());
        LocalSnapshot {
            registry,
            seen: Cell::new(seen),
            snapshot,
        }
    }

    /// Runs `read` on the registry's current snapshot: the copy, refreshed
    /// first if a deploy has happened since it was taken.
    ///
    /// The generation is bumped after the swap, under the write lock, so a
    /// copy taken after reading a generation is at least that new.
    pub(crate) fn with<R>(&self, read: impl FnOnce(&Snapshot) -> R) -> R {
        let generation = self.registry.generation.load(Ordering::Acquire);
        if generation != self.seen.get() {
            *self.snapshot.borrow_mut() = self.registry.snapshot();
            self.seen.set(generation);
        }
        read(&self.snapshot.borrow())
    }
}
