//! A listener of one worker thread: its socket, one of several bound to the
//! same address with `SO_REUSEPORT` (so the kernel spreads connections
//! across threads), and what every connection accepted on it shares.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use isopod_pool::PoolThread;

use socket2::{Domain, Protocol, Socket, Type};

use crate::registry::LocalSnapshot;

/// Binds `count` sockets to `addr`. With port 0 the first socket picks the
/// port and the others join it.
pub(crate) fn bind_reuseport(addr: SocketAddr, count: usize) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// What every connection accepted on one listener of one thread shares.
pub(crate) struct ListenerContext {
    /// The worker thread's view of the pool.
    pub(crate) thread: PoolThread,
    /// The app this listener belongs to, if it is an app's own port.
    pub(crate) dedicated: Option<Arc<str>>,
    /// The deployed apps, as this listener last saw them.
    pub(crate) apps: LocalSnapshot,
    /// Which HTTP/1.1 stack reads its connections.
    pub(crate) http1: Http1Path,
    /// Which peers are believed about the client, and the access log.
    pub(crate) edge: Arc<EdgeConfig>,
    /// True once the server is stopping (see `accept::Serving`).
    pub(crate) draining: tokio::sync::watch::Receiver<bool>,
}

impl ListenerContext {
    /// Whether the server is stopping: a connection closes after its
    /// current response.
    pub(crate) fn draining(&self) -> bool {
        // An atomic load, not the value's lock: this is asked per response.
        // The sender only ever sends `true`; gone, it is stopping too.
        !matches!(self.draining.has_changed(), Ok(false))
    }
}

/// How requests are vetted and logged at the edge: the same for every
/// listener of the process.
#[derive(Debug, Clone, Default)]
pub struct EdgeConfig {
    /// Peers whose `X-Forwarded-*` and `X-Request-Id` headers are believed.
    pub trusted_proxies: crate::edge::TrustedProxies,
    /// Which requests get an access record.
    pub access_log: crate::access_log::AccessLog,
}

/// Which HTTP/1.1 stack reads requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Http1Path {
    /// isopod's own path for bodiless HTTP/1.1 requests, hyper for the
    /// rest of a connection from the first request it leaves (the default).
    #[default]
    Own,
    /// hyper for every request.
    Hyper,
}
