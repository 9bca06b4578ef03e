//! The server: the pool's worker threads, each accepting connections on its
//! own listeners and serving them with the pool's instances on that thread.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use isopod_pool::{Pool, PoolConfig, PoolThread};
use isopod_runtime::InstanceError;
use isopod_store::{NewVersion, Origin, Store, StoreError, VersionRecord};
use tokio::sync::watch;

use crate::accept::{Serving, ThreadListeners};
use crate::app_metrics::AppMetricsSet;
use crate::deploy_check::check_bundle;
use crate::deployments::{deployed_from, manifest_from_record, Deployments};
use crate::listener::{bind_reuseport, EdgeConfig, Http1Path};
use crate::log_tail::LogTail;
use crate::manifest::AppManifest;
use crate::ports::{OwnPorts, PortError};
use crate::registry::Registry;
use crate::snapshots::Snapshots;

/// What a [`Server`] serves and where.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The HTTP listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Worker threads, the instance cap, spares and replicas.
    pub pool: PoolConfig,
    /// The apps.
    pub apps: Vec<AppManifest>,
    /// The admin API, if enabled.
    pub admin: Option<AdminConfig>,
    /// Which HTTP/1.1 stack reads requests (isopod's own path by default).
    pub http1: Http1Path,
    /// Trusted proxies and the access log.
    pub edge: EdgeConfig,
    /// The persistent registry. With one, `apps` are applied to it at start
    /// (each changed declaration a new version) and the server serves every
    /// app active in it; without, it serves `apps` alone.
    pub store: Option<Arc<Store>>,
    /// Where each app's recent log records are kept, for the admin API (it
    /// must also be installed as a layer of the process's subscriber).
    pub log_tail: Option<Arc<LogTail>>,
    /// How many apps get `/metrics` series of their own; the rest share
    /// the `other` label.
    pub metrics_max_apps: usize,
    /// How each version's startup snapshot is made (normally the isopod
    /// binary itself, run as `isopod __snapshot`); `None` turns version
    /// snapshots off, and every instance loads its bundle from source.
    pub snapshotter: Option<isopod_runtime::Snapshotter>,
    /// Where apps' KV namespaces and D1 databases live; without it, an app
    /// with a KV or D1 binding is refused.
    pub storage: Option<Arc<isopod_store::Storage>>,
}

impl ServerConfig {
    /// Serves `apps` on `listen` with `pool`: no admin API, no registry, the
    /// default HTTP stack and edge settings.
    pub fn new(listen: SocketAddr, pool: PoolConfig, apps: Vec<AppManifest>) -> ServerConfig {
        ServerConfig {
            listen,
            pool,
            apps,
            admin: None,
            http1: Http1Path::default(),
            edge: EdgeConfig::default(),
            store: None,
            log_tail: None,
            metrics_max_apps: DEFAULT_METRICS_MAX_APPS,
            snapshotter: None,
            storage: None,
        }
    }
}

/// The default bound on apps with `/metrics` series of their own.
pub const DEFAULT_METRICS_MAX_APPS: usize = 200;

/// Where the admin API listens and the tokens it accepts.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The admin listen address.
    pub listen: SocketAddr,
    /// The named bearer tokens (name, token), one of which every admin call
    /// (but `/healthz`) must present; a change records the token's name.
    pub tokens: Vec<(String, String)>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An app's bundle was refused.
    #[error("app '{app}': {error}")]
    App {
        /// Which app.
        app: String,
        /// Why.
        error: InstanceError,
    },
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// An app's own port cannot be its.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The worker threads could not be started.
    #[error(transparent)]
    Pool(#[from] isopod_pool::PoolError),
    /// The registry could not be read or written.
    #[error("the registry: {0}")]
    Store(#[from] StoreError),
    /// A version in the registry can no longer be served.
    #[error("the registry: {0}")]
    Stored(String),
}

/// A running server.
pub struct Server {
    /// Set to stop the accept loops of the main address (apps' own ports
    /// have their own, in `ports`).
    stop_accepting: watch::Sender<bool>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    pool: Arc<Pool>,
    /// Apps' own ports; their accept loops run while this lives.
    _ports: Arc<OwnPorts>,
    store: Option<Arc<Store>>,
    /// Set when it begins to stop (`/healthz` then answers 503).
    draining: Arc<AtomicBool>,
}

impl Server {
    /// Checks every app's bundle, binds the listeners and starts the worker
    /// threads.
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        isopod_runtime::init_v8_with(&config.pool.v8);
        for app in &config.apps {
            check_bundle(&app.config, &app.bundle).map_err(|error| ServerError::App {
                app: app.config.name.to_string(),
                error,
            })?;
        }
        let threads = config.pool.threads.max(1);
        let default_limits = config.pool.limits.clone();

        // Every thread gets one socket per listen address (SO_REUSEPORT).
        let mut per_thread: Vec<ThreadListeners> = (0..threads).map(|_| Vec::new()).collect();
        let bind = |addr: SocketAddr| {
            bind_reuseport(addr, threads).map_err(|error| ServerError::Listen { addr, error })
        };
        let main = bind(config.listen)?;
        let local_addr = main[0].local_addr().map_err(|error| ServerError::Listen {
            addr: config.listen,
            error,
        })?;
        let (stop_accepting, accepting) = watch::channel(false);
        for (thread, listener) in main.into_iter().enumerate() {
            per_thread[thread].push((listener, None, Some(accepting.clone())));
        }
        // Bound before any app can serve, so that all of isopod's own
        // listeners are unreachable from apps from their first request on
        // (apps' own ports are added as they are bound), and before apps'
        // ports, which may not take its port.
        let admin = match config.admin {
            Some(admin) => Some((bind_admin(admin.listen)?, admin.tokens)),
            None => None,
        };
        let own_listeners: Vec<SocketAddr> = std::iter::once(local_addr)
            .chain(admin.as_ref().map(|((_, addr), _)| *addr))
            .collect();
        isopod_runtime::deny_own_listeners(&own_listeners);
        let reserved: Vec<u16> = own_listeners.iter().map(SocketAddr::port).collect();
        let ports = Arc::new(OwnPorts::new(config.listen.ip(), &reserved));

        let metrics = Arc::new(AppMetricsSet::new(config.metrics_max_apps));
        let apps = match &config.store {
            Some(store) => stored_apps(
                store,
                config.apps,
                &default_limits,
                config.storage.as_deref(),
            )?,
            None => config.apps.into_iter().map(|app| (app, None)).collect(),
        };
        let registry = Arc::new(Registry::default());
        let snapshots = Arc::new(Snapshots::new(
            config.snapshotter.clone(),
            config.store.clone(),
        ));
        let mut without_snapshots = Vec::new();
        for (app, record) in apps {
            if let Some(port) = app.port {
                let bound = ports.bind(&app.config.name, port, threads)?;
                for (thread, listener) in bound.sockets.into_iter().enumerate() {
                    per_thread[thread].push((
                        listener,
                        Some(app.config.name.clone()),
                        Some(bound.stop.clone()),
                    ));
                }
            }
            let counters = metrics.for_app(&app.config.name);
            let deployed = deployed_from(app, record.as_ref(), counters);
            without_snapshots.push(deployed.version.clone());
            registry.deploy(deployed);
        }

        let listeners = Arc::new(Mutex::new(
            per_thread.into_iter().map(Some).collect::<Vec<_>>(),
        ));
        let http1 = config.http1;
        let edge = Arc::new(config.edge);
        let serving = Arc::new(Serving {
            registry: registry.clone(),
            http1,
            edge: edge.clone(),
            draining: accepting.clone(),
        });
        let thread_serving = serving.clone();
        let main: isopod_pool::ThreadMain = Arc::new(move |thread: PoolThread| {
            let mine = listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(thread.index())
                .and_then(Option::take)
                .unwrap_or_default();
            Box::pin(crate::accept::accept_loops(
                thread,
                thread_serving.clone(),
                mine,
            ))
        });
        let memory_budget = config.pool.memory_budget;
        let pool = Pool::start_with(
            PoolConfig {
                threads,
                ..config.pool
            },
            Some(main),
        )?;
        let pool = Arc::new(pool);
        // Served from source from their first request; their snapshots
        // follow, from the registry or made anew.
        snapshots.clone().fill_in_background(without_snapshots);
        let draining = Arc::new(AtomicBool::new(false));
        let admin_addr = match admin {
            Some(((listener, addr), tokens)) => {
                let deployments = Arc::new(
                    Deployments::new(
                        pool.clone(),
                        ports.clone(),
                        metrics.clone(),
                        config.log_tail.clone(),
                        default_limits,
                        serving,
                        snapshots.clone(),
                    )
                    .with_storage(config.storage.clone()),
                );
                crate::admin::spawn(
                    listener,
                    crate::admin::Admin {
                        tokens,
                        registry: registry.clone(),
                        pool: pool.clone(),
                        deployments,
                        metrics,
                        log_tail: config.log_tail,
                        draining: draining.clone(),
                        memory_budget,
                    },
                )
                .map_err(|error| ServerError::Listen { addr, error })?;
                Some(addr)
            }
            None => None,
        };
        Ok(Server {
            stop_accepting,
            local_addr,
            admin_addr,
            registry,
            pool,
            _ports: ports,
            store: config.store,
            draining,
        })
    }

    /// The admin listener's address, when the admin API is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The main listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The deployed apps.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The pool serving them.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Blocks until the worker threads stop.
    pub fn wait(self) {
        self.pool.wait();
    }

    /// Stops the worker threads and waits for them.
    pub fn shutdown(self) {
        self.pool.shutdown();
    }

    /// Stops taking connections, lets the requests in flight finish (their
    /// streamed bodies and `waitUntil` work included) for at most `drain`,
    /// then stops the worker threads. Returns how many requests were still
    /// in flight when it stopped waiting (0 after a clean drain).
    pub fn shutdown_gracefully(self, drain: std::time::Duration) -> usize {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.stop_accepting.send(true);
        self._ports.close_all();
        let deadline = std::time::Instant::now() + drain;
        let in_flight = || -> usize {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(runtime) = runtime else {
                return 0;
            };
            runtime
                .block_on(self.pool.stats())
                .instances
                .iter()
                .map(|row| row.in_flight)
                .sum()
        };
        let mut left = in_flight();
        while left > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            left = in_flight();
        }
        self.pool.shutdown();
        if let Some(store) = &self.store {
            if let Err(error) = store.flush() {
                tracing::error!(%error, "could not flush the registry");
            }
        }
        left
    }
}

/// The apps a server with a registry starts with: `declared` (the config
/// file's) applied to `store` first, each changed declaration recorded as a
/// new version, then every app active in the registry, with its record.
fn stored_apps(
    store: &Store,
    declared: Vec<AppManifest>,
    defaults: &isopod_runtime::Limits,
    storage: Option<&isopod_store::Storage>,
) -> Result<Vec<(AppManifest, Option<VersionRecord>)>, ServerError> {
    for app in &declared {
        let declaration = app.declaration();
        let source = app.bundle.source();
        let digest = isopod_store::sha256_hex(format!("{declaration}\n{}", &**source).as_bytes());
        let recorded = store.apply_declared(
            &app.config.name,
            &digest,
            NewVersion {
                source: source.as_bytes(),
                manifest: &declaration,
                deployed_by: "config",
                origin: Origin::Config,
            },
        )?;
        if let Some(record) = recorded {
            tracing::info!(
                app = %app.config.name,
                number = record.number,
                "the config file's declaration is recorded as a new version"
            );
        }
    }
    store
        .active_versions()?
        .into_iter()
        .map(|stored| {
            let manifest =
                manifest_from_record(&stored, defaults, storage).map_err(ServerError::Stored)?;
            Ok((manifest, Some(stored.record)))
        })
        .collect()
}

/// Binds the admin listener (non-blocking, for the admin thread's runtime).
fn bind_admin(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(listen).map_err(|error| ServerError::Listen {
        addr: listen,
        error,
    })?;
    let addr = listener.local_addr().map_err(|error| ServerError::Listen {
        addr: listen,
        error,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|error| ServerError::Listen { addr, error })?;
    Ok((listener, addr))
}
