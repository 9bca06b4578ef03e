//! The accept loops: on every worker thread, one per listener (the main
//! address, apps' own ports), each handing its connections to
//! `connection::serve` on the thread's `LocalSet`.

use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;

use isopod_pool::{Pool, PoolThread};
use tokio::sync::watch;

use crate::head_deadline::HeadWatch;
use crate::listener::{EdgeConfig, Http1Path, ListenerContext};
use crate::ports::{stopped, BoundPort};
use crate::registry::{LocalSnapshot, Registry};

/// A listener of one worker thread: the socket, the app it is dedicated to
/// if it is an app's own port, and what stops it then (see `ports.rs`).
pub(crate) type ThreadListener = (TcpListener, Option<Arc<str>>, Option<watch::Receiver<bool>>);

/// One worker thread's listeners.
pub(crate) type ThreadListeners = Vec<ThreadListener>;

/// What every accept loop of the process shares.
pub(crate) struct Serving {
    pub(crate) registry: Arc<Registry>,
    pub(crate) http1: Http1Path,
    pub(crate) edge: Arc<EdgeConfig>,
    /// Becomes true when the server begins to stop: connections then close
    /// after their current response, and idle ones at once.
    pub(crate) draining: watch::Receiver<bool>,
}

pub(crate) async fn accept_loops(
    thread: PoolThread,
    serving: Arc<Serving>,
    listeners: ThreadListeners,
) {
    let mut loops = Vec::new();
    for listener in listeners {
        loops.push(tokio::task::spawn_local(accept_on(
            thread.clone(),
            serving.clone(),
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
    serving: &Arc<Serving>,
    app: &Arc<str>,
    bound: BoundPort,
) {
    for (thread, socket) in bound.sockets.into_iter().enumerate() {
        let listener = (socket, Some(app.clone()), Some(bound.stop.clone()));
        let serving = serving.clone();
        let started = pool.spawn_on_worker(
            thread,
            Box::new(move |thread| Box::pin(accept_on(thread, serving, listener))),
        );
        if !started {
            tracing::error!(app = %app, thread, "cannot start an accept loop: the pool has stopped");
        }
    }
}

async fn accept_on(thread: PoolThread, serving: Arc<Serving>, listener: ThreadListener) {
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
        apps: LocalSnapshot::new(serving.registry.clone()),
        dedicated,
        http1: serving.http1,
        edge: serving.edge.clone(),
        draining: serving.draining.clone(),
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
        let (stream, peer) = match accepted {
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
        let task =
            tokio::task::spawn_local(crate::connection::serve(stream, peer, listener, watched));
        watch.start(task.abort_handle(), &listener_context.draining);
    }
}
