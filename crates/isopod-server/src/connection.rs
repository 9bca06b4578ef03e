//! One accepted connection: which HTTP/1.1 stack serves it.
//!
//! isopod's own path (`h1`) serves the requests an edge runtime mostly gets
//! and hands the connection to hyper at the first request it leaves;
//! [`Http1Path::Hyper`] has hyper serve every request from the start (for
//! comparing the two stacks, which must answer every request alike).
//!
//! Invariant: whichever stack reads a request, it reaches the same
//! `service` functions (`prepare` or `prepare_bodiless`, then `answer`), so
//! routing and refusals have one implementation.

use std::net::SocketAddr;
use std::rc::Rc;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::h1::{Replay, MAX_HEADER_LINES, MAX_HEAD_BYTES};
use crate::head_deadline::HeadWatch;
use crate::listener::{Http1Path, ListenerContext};
use crate::service::handle;

/// Serves a connection until it closes.
pub(crate) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    listener: Rc<ListenerContext>,
    watch: Rc<HeadWatch>,
) {
    let peer = crate::edge::Peer::of(peer);
    let rest = match listener.http1 {
        Http1Path::Own => match crate::h1::serve(socket, &peer, &listener, &watch).await {
            Some(rest) => rest,
            None => return,
        },
        Http1Path::Hyper => Replay::new(Vec::new(), socket),
    };
    serve_with_hyper(rest, peer, listener, watch).await;
}

/// Serves the rest of a connection with hyper, starting with the bytes
/// already read.
async fn serve_with_hyper(
    io: Replay,
    peer: crate::edge::Peer,
    listener: Rc<ListenerContext>,
    watch: Rc<HeadWatch>,
) {
    let listener_draining = listener.draining.clone();
    let service = hyper::service::service_fn(move |request| {
        handle(listener.clone(), peer, request, watch.request_started())
    });
    let served = http1::Builder::new()
        .keep_alive(true)
        // One flat buffer and one `send` per response rather than a
        // `writev` of head and body: for the small responses that
        // dominate, copying the body costs less than the vectored write
        // (measured: 7–12 % more requests/s for hello world; `deno serve`,
        // traced, also sends each response in one `sendto`).
        .writev(false)
        // The head timeout is `head_deadline`'s sweep, not a timer per
        // request.
        .header_read_timeout(None)
        .max_headers(MAX_HEADER_LINES)
        // The head's own limit, checked on every head whatever the reads
        // (the buffer's limit, `max_buf_size`, lets a head past it when
        // one read brings it whole).
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service);
    let mut served = std::pin::pin!(served);
    let mut draining = listener_draining;
    let result = tokio::select! {
        result = served.as_mut() => result,
        _ = draining.wait_for(|stopping| *stopping) => {
            // The response in progress is finished; no other is read.
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}
