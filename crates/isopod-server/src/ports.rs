//! Apps' own listen ports: each bound once per worker thread (with
//! `SO_REUSEPORT`, like the main listener), at start-up from the config file
//! or later by an admin deploy, and closed when the app gives the port up or
//! is deleted.
//!
//! Invariants:
//! - A port belongs to at most one app, and never to one of isopod's own
//!   listeners (`SO_REUSEPORT` would let a second socket share them, and
//!   split their connections).
//! - Every port bound here is on the list of addresses apps' `fetch` may not
//!   reach (isopod's own listeners) before any app can serve.
//! - Closing a port stops its accept loops; connections already accepted
//!   are served to their end.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::listener::bind_reuseport;

/// Why a port cannot be an app's.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// One of isopod's own listeners (the main or admin port).
    #[error("port {0} is one of isopod's own listeners")]
    Reserved(u16),
    /// Another app's.
    #[error("port {port} already belongs to app '{app}'")]
    Taken {
        /// The port.
        port: u16,
        /// Its app.
        app: Arc<str>,
    },
    /// The operating system refused it.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// The ports apps own, on the main listener's IP.
pub(crate) struct OwnPorts {
    ip: IpAddr,
    /// The main and admin listeners' ports.
    reserved: Vec<u16>,
    open: Mutex<HashMap<u16, OpenPort>>,
}

struct OpenPort {
    app: Arc<str>,
    /// Dropped (or set) to stop the port's accept loops.
    stop: watch::Sender<bool>,
}

/// A port just bound for an app: one socket per worker thread, and what
/// their accept loops stop on.
pub(crate) struct BoundPort {
    pub(crate) sockets: Vec<TcpListener>,
    pub(crate) stop: watch::Receiver<bool>,
}

impl OwnPorts {
    pub(crate) fn new(ip: IpAddr, reserved: &[u16]) -> OwnPorts {
        OwnPorts {
            ip,
            reserved: reserved.to_vec(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Binds `port` for `app`, one socket per worker thread. Binding the
    /// port `app` already owns is refused as taken: the caller keeps it.
    pub(crate) fn bind(
        &self,
        app: &Arc<str>,
        port: u16,
        threads: usize,
    ) -> Result<BoundPort, PortError> {
        if self.reserved.contains(&port) {
            return Err(PortError::Reserved(port));
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(owner) = open.get(&port) {
            return Err(PortError::Taken {
                port,
                app: owner.app.clone(),
            });
        }
        let addr = SocketAddr::new(self.ip, port);
        let sockets =
            bind_reuseport(addr, threads).map_err(|error| PortError::Bind { addr, error })?;
        let bound = sockets
            .first()
            .and_then(|socket| socket.local_addr().ok())
            .unwrap_or(addr);
        isopod_runtime::deny_own_listeners(&[bound]);
        let (stop, stopped) = watch::channel(false);
        open.insert(
            bound.port(),
            OpenPort {
                app: app.clone(),
                stop,
            },
        );
        Ok(BoundPort {
            sockets,
            stop: stopped,
        })
    }

    /// Stops the accept loops of every app's own port (at shutdown);
    /// their sockets close as the loops see it.
    pub(crate) fn close_all(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|e| e.into_inner()));
        for closed in open.into_values() {
            let _ = closed.stop.send(true);
        }
    }

    /// Stops listening on `port`: resolves once every worker thread's accept
    /// loop has dropped its socket (or after five seconds, if a thread is
    /// stuck), so a caller that returns after this has closed the port.
    pub(crate) async fn close(&self, port: u16) {
        const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
        let closed = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&port);
        if let Some(closed) = closed {
            let _ = closed.stop.send(true);
            let _ = tokio::time::timeout(CLOSE_WAIT, closed.stop.closed()).await;
            tracing::info!(app = %closed.app, port, "stopped listening on the app's own port");
        }
    }
}

/// Resolves once `stop` says so (or its port's record is gone); never, for a
/// listener that is not an app's own port.
pub(crate) async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(stop) => {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
        None => std::future::pending().await,
    }
}
