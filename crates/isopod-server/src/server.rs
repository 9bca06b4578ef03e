//! The server: worker threads, their listeners and their apps.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use isopod_runtime::{AppConfig, Bundle, Instance, InstanceError};
use tokio::sync::watch;

use crate::listener::bind_reuseport;
use crate::service::{handle, AppSlot};

/// An app to serve: its configuration and its bundle.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// Name, variables, network policy.
    pub config: AppConfig,
    /// The code.
    pub bundle: Bundle,
}

/// What a [`Server`] serves and where.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The HTTP listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Worker threads (at least one).
    pub threads: usize,
    /// The app every request goes to.
    pub app: AppSpec,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The app's bundle was refused.
    #[error("app '{app}': {error}")]
    App {
        /// Which app.
        app: String,
        /// Why.
        error: InstanceError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a worker thread: {0}")]
    Thread(std::io::Error),
}

/// A running server.
pub struct Server {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Checks the app's bundle, binds the listeners and starts the worker
    /// threads; returns once every thread is ready to serve.
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        isopod_runtime::init_v8();
        check_bundle(&config.app)?;

        let threads = config.threads.max(1);
        let listeners =
            bind_reuseport(config.listen, threads).map_err(|error| ServerError::Listen {
                addr: config.listen,
                error,
            })?;
        let local_addr = listeners[0]
            .local_addr()
            .map_err(|error| ServerError::Listen {
                addr: config.listen,
                error,
            })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let app = Arc::new(config.app);
        let mut handles = Vec::with_capacity(threads);
        for (index, listener) in listeners.into_iter().enumerate() {
            let app = app.clone();
            let shutdown_rx = shutdown_rx.clone();
            let ready_tx = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("isopod-worker-{index}"))
                .spawn(move || worker_thread(listener, app, shutdown_rx, ready_tx))
                .map_err(ServerError::Thread)?;
            handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..threads {
            if ready_rx.recv().is_err() {
                break;
            }
        }
        Ok(Server {
            local_addr,
            shutdown,
            threads: handles,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Blocks until the worker threads stop.
    pub fn wait(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }

    /// Stops accepting, ends the worker threads and waits for them.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.wait();
    }
}

/// Evaluates the app's bundle in a scratch isolate on a scratch thread, so a
/// broken bundle is refused before anything serves it.
fn check_bundle(app: &AppSpec) -> Result<(), ServerError> {
    let spec = app.clone();
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async {
                    let mut instance = Instance::blank(&spec.config)?;
                    instance.load(&spec.bundle, &spec.config).await
                })
            })
            .join()
    });
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(ServerError::App {
            app: app.config.name.to_string(),
            error,
        }),
        Err(_) => Err(ServerError::App {
            app: app.config.name.to_string(),
            error: InstanceError::Bundle("checking the bundle panicked".into()),
        }),
    }
}

fn worker_thread(
    listener: TcpListener,
    app: Arc<AppSpec>,
    mut shutdown: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot build a worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let slot = Rc::new(AppSlot::new(app.clone()));
        // Warm the thread's instance before taking traffic.
        if let Err(error) = slot.instance().await {
            tracing::error!(app = %app.config.name, %error, "could not start an instance");
        }
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "cannot register the listener");
                return;
            }
        };
        let _ = ready.send(());
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.changed() => break,
            };
            let (stream, _peer) = match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let slot = slot.clone();
            tokio::task::spawn_local(async move {
                let service =
                    hyper::service::service_fn(move |request| handle(slot.clone(), request));
                let connection = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
        }
    });
}
