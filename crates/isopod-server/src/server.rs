//! The server: the pool's worker threads, each accepting connections on its
//! own listeners and serving them with the pool's instances on that thread.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use isopod_pool::{AppVersion, ExecutionMode, Pool, PoolConfig, PoolThread};
use isopod_runtime::{AppConfig, Bundle, Instance, InstanceError};
use tokio::sync::watch;

use crate::connection::Http1Path;
use crate::head_deadline::HeadWatch;
use crate::listener::bind_reuseport;
use crate::ports::{stopped, BoundPort, OwnPorts, PortError};
use crate::registry::{Deployed, LocalSnapshot, Registry};
use crate::routing::Route;
use crate::service::ListenerContext;

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
        }
    }
}

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
}

/// Where the admin API listens and the token it requires.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The admin listen address.
    pub listen: SocketAddr,
    /// The bearer token every admin call (but `/healthz`) must present.
    pub token: String,
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
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    pool: Arc<Pool>,
    /// Apps' own ports; their accept loops run while this lives.
    _ports: Arc<OwnPorts>,
}

/// A listener of one worker thread: the socket, the app it is dedicated to
/// if it is an app's own port, and what stops it then (see `ports.rs`).
type ThreadListener = (TcpListener, Option<Arc<str>>, Option<watch::Receiver<bool>>);

/// One worker thread's listeners.
type ThreadListeners = Vec<ThreadListener>;

impl Server {
    /// Checks every app's bundle, binds the listeners and starts the worker
    /// threads.
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        isopod_runtime::init_v8();
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
        for (thread, listener) in main.into_iter().enumerate() {
            per_thread[thread].push((listener, None, None));
        }
        // Bound before any app can serve, so that all of isopod's own
        // listeners are unreachable from apps from their first request on
        // (apps' own ports are added as they are bound), and before apps'
        // ports, which may not take its port.
        let admin = match config.admin {
            Some(admin) => Some((bind_admin(admin.listen)?, admin.token)),
            None => None,
        };
        let own_listeners: Vec<SocketAddr> = std::iter::once(local_addr)
            .chain(admin.as_ref().map(|((_, addr), _)| *addr))
            .collect();
        isopod_runtime::deny_own_listeners(&own_listeners);
        let reserved: Vec<u16> = own_listeners.iter().map(SocketAddr::port).collect();
        let ports = Arc::new(OwnPorts::new(config.listen.ip(), &reserved));

        let registry = Arc::new(Registry::default());
        for app in config.apps {
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
            registry.deploy(Deployed::new(
                AppVersion::new(app.config, app.bundle, app.mode),
                app.routes,
                app.port,
            ));
        }

        let listeners = Arc::new(Mutex::new(
            per_thread.into_iter().map(Some).collect::<Vec<_>>(),
        ));
        let thread_registry = registry.clone();
        let http1 = config.http1;
        let main: isopod_pool::ThreadMain = Arc::new(move |thread: PoolThread| {
            let mine = listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(thread.index())
                .and_then(Option::take)
                .unwrap_or_default();
            Box::pin(accept_loops(thread, thread_registry.clone(), http1, mine))
        });
        let pool = Pool::start_with(
            PoolConfig {
                threads,
                ..config.pool
            },
            Some(main),
        )?;
        let pool = Arc::new(pool);
        let admin_addr = match admin {
            Some(((listener, addr), token)) => {
                crate::admin::spawn(
                    listener,
                    crate::admin::Admin {
                        token: token.into(),
                        registry: registry.clone(),
                        pool: pool.clone(),
                        ports: ports.clone(),
                        default_limits,
                        http1,
                    },
                )
                .map_err(|error| ServerError::Listen { addr, error })?;
                Some(addr)
            }
            None => None,
        };
        Ok(Server {
            local_addr,
            admin_addr,
            registry,
            pool,
            _ports: ports,
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

/// Evaluates a bundle in a scratch isolate on a scratch thread, so a broken
/// bundle is refused before anything serves it. Top-level code runs under
/// the app's startup CPU budget and heap limit, as in every instance: past
/// them the process's watchdog terminates it (it only signals the isolate)
/// and the bundle is refused.
pub(crate) fn check_bundle(config: &AppConfig, bundle: &Bundle) -> Result<(), InstanceError> {
    let config = config.clone();
    let bundle = bundle.clone();
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async {
                    let mut instance = Instance::blank(&config)?;
                    instance.load(&bundle, &config).await
                })
            })
            .join()
    });
    outcome.unwrap_or_else(|_| Err(InstanceError::Bundle("checking the bundle panicked".into())))
}

async fn accept_loops(
    thread: PoolThread,
    registry: Arc<Registry>,
    http1: Http1Path,
    listeners: ThreadListeners,
) {
    let mut loops = Vec::new();
    for listener in listeners {
        loops.push(tokio::task::spawn_local(accept_on(
            thread.clone(),
            registry.clone(),
            http1,
            listener,
        )));
    }
    for accept in loops {
        let _ = accept.await;
    }
}

/// Starts serving an app's port bound after start-up (an admin deploy):
/// its accept loop on each worker thread, on that thread's socket.
pub(crate) fn serve_own_port(
    pool: &Pool,
    registry: &Arc<Registry>,
    app: &Arc<str>,
    bound: BoundPort,
    http1: Http1Path,
) {
    for (thread, socket) in bound.sockets.into_iter().enumerate() {
        let listener = (socket, Some(app.clone()), Some(bound.stop.clone()));
        let registry = registry.clone();
        let started = pool.spawn_on_worker(
            thread,
            Box::new(move |thread| Box::pin(accept_on(thread, registry, http1, listener))),
        );
        if !started {
            tracing::error!(app = %app, thread, "cannot start an accept loop: the pool has stopped");
        }
    }
}

async fn accept_on(
    thread: PoolThread,
    registry: Arc<Registry>,
    http1: Http1Path,
    listener: ThreadListener,
) {
    let (socket, dedicated, stop) = listener;
    let socket = match tokio::net::TcpListener::from_std(socket) {
        Ok(socket) => socket,
        Err(error) => {
            tracing::error!(%error, "cannot register a listener");
            return;
        }
    };
    let listener = Rc::new(ListenerContext {
        thread,
        apps: LocalSnapshot::new(registry),
        dedicated,
        http1,
    });
    accept_loop(socket, listener, stop).await;
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    listener_context: Rc<ListenerContext>,
    mut stop: Option<watch::Receiver<bool>>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => Some(accepted),
            () = stopped(&mut stop) => None,
        };
        let Some(accepted) = accepted else {
            // The socket first: whoever waits for the stop signal's
            // receivers to go (`OwnPorts::close`) then finds it closed.
            drop(listener);
            drop(stop);
            return;
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let listener = listener_context.clone();
        let watch = HeadWatch::new();
        let watched = watch.clone();
        let task = tokio::task::spawn_local(crate::connection::serve(stream, listener, watched));
        watch.start(task.abort_handle());
    }
}
