//! isopod's own HTTP/1.1 serve path, for the requests an edge runtime
//! mostly gets: HTTP/1.1, no body, an origin-form target, on keep-alive
//! connections. hyper serves the rest, and the connection from then on.
//!
//! Why not hyper for all of it: for a small handler, hyper's general
//! machinery (a `HeaderMap` built for every request head and again for
//! every response, its dispatcher's state machine, the service future's
//! moves) cost more instructions than the handler's whole JavaScript call.
//! This path reads the head with hyper's own parser (`httparse`) straight
//! into the form an instance takes, and writes the response head and a
//! known-length body with one `send`. deno took the same path in 2026 for
//! `Deno.serve` (deno#34446).
//!
//! Invariants:
//! - A client cannot tell which path served it: heads this path takes are
//!   ones hyper reads the same way (`request_head`), and responses are
//!   framed as hyper frames them (`response_head`). Anything else is
//!   handed to hyper with the bytes already read (`replay`), and hyper
//!   serves the connection from that request on.
//! - Requests on a connection are answered one at a time, in order
//!   (pipelined heads wait in the input buffer).
//! - A client that closes its connection while its handler runs cancels
//!   the request (the instance aborts `request.signal`), as with hyper;
//!   one that goes away during a streamed body cancels the stream.
//! - The connection is busy for the head timeout (`head_deadline`) from a
//!   head's arrival until its response is sent in full.

mod replay;
pub(crate) mod request_head;
mod response_head;

use std::future::{poll_fn, Future};
use std::io::{self, Write as _};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;

use crate::access_log::LoggedBody;
use bytes::Bytes;
use http::{Method, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::head_deadline::HeadWatch;
use crate::listener::ListenerContext;
use crate::service::prepare_bodiless;

pub(crate) use replay::Replay;
use request_head::Scan;
pub(crate) use request_head::{MAX_HEADER_LINES, MAX_HEAD_BYTES};
use response_head::Framing;

/// How much the input buffer grows by when a head is not all there.
const READ_CHUNK: usize = 4096;

/// Serves a connection until it closes or until the first request this
/// path leaves to hyper: then returns the connection, with the bytes
/// already read, for hyper to serve from that request on (see the
/// module's doc).
///
/// The request's and the response's values are large (over 100 bytes), and
/// every move of one through a layer of futures is a copy: they are built
/// where they are used and lent, not passed on, where that is possible.
pub(crate) async fn serve(
    mut socket: TcpStream,
    peer: &crate::edge::Peer,
    connection: &ListenerContext,
    watch: &Rc<HeadWatch>,
) -> Option<Replay> {
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut output: Vec<u8> = Vec::new();
    loop {
        // Empty: a connection's usual state between requests.
        let scanned = if input.is_empty() {
            Scan::Partial
        } else {
            request_head::scan(&input)
        };
        let head = match scanned {
            Scan::Simple(head) => head,
            Scan::Partial if input.len() < MAX_HEAD_BYTES => {
                input.reserve(READ_CHUNK);
                // Idle between requests when the server stops, the
                // connection is closed by its thread's sweep
                // (`head_deadline.rs`), not by a wait per read here.
                match tokio::io::AsyncReadExt::read_buf(&mut socket, &mut input).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => continue,
                }
            }
            Scan::Partial | Scan::Defer => return Some(Replay::new(input, socket)),
        };
        let head_request = head.method == Method::HEAD;
        let close = head.close;
        let length = head.length;
        // Pinned where it is made: a move of this future is a copy of it
        // whole (hundreds of bytes).
        let answer = pin!(prepare_bodiless(
            connection,
            peer,
            head.method,
            head.target,
            head.host,
            head.headers,
            head.edge_lines
        )
        .answer(connection));
        input.drain(..length);
        let busy = watch.request_started();
        // `None`: the client went away; nothing is left to serve.
        let mut response = answer_unless_gone(answer, &socket, &mut input).await?;
        // Only isopod's own answers carry `Connection` (a handler's
        // hop-by-hop lines are stripped): one that closes is obeyed.
        let closing_answer = response
            .headers_mut()
            .remove(http::header::CONNECTION)
            .is_some();
        let close = close || closing_answer || connection.draining();
        output.clear();
        if send(&mut socket, &mut output, head_request, &mut response, close)
            .await
            .is_err()
        {
            return None;
        }
        drop(busy);
        if close {
            let _ = socket.shutdown().await;
            return None;
        }
    }
}

/// The request's response, or `None` if the client closed the connection
/// first (dropping the request's future cancels it). Bytes the client
/// sends meanwhile (pipelined heads) are kept in `input`, up to a head's
/// limit.
fn answer_unless_gone<'a>(
    mut answer: Pin<&'a mut impl Future<Output = Response<LoggedBody>>>,
    socket: &'a TcpStream,
    input: &'a mut Vec<u8>,
) -> impl Future<Output = Option<Response<LoggedBody>>> + 'a {
    poll_fn(move |cx| {
        if let Poll::Ready(response) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        while input.len() < MAX_HEAD_BYTES {
            match socket.poll_read_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(())) => {}
            }
            input.reserve(READ_CHUNK);
            match socket.try_read_buf(input) {
                Ok(0) => return Poll::Ready(None),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(None),
            }
        }
        Poll::Pending
    })
}

/// Sends a response: its head, then its body as the head frames it. A
/// body of known length goes with the head in one write; a stream is sent
/// chunk by chunk, written out whenever the next chunk is not ready yet.
async fn send(
    socket: &mut TcpStream,
    output: &mut Vec<u8>,
    head_request: bool,
    response: &mut Response<LoggedBody>,
    close: bool,
) -> io::Result<()> {
    let exact = response.body().size_hint().exact();
    let framing = response_head::encode(
        output,
        head_request,
        response.status(),
        response.headers(),
        response.body().request_id(),
        exact,
        close,
    );
    isopod_runtime::recycle_header_map(std::mem::take(response.headers_mut()));
    let body = response.body_mut();
    let mut remaining = match framing {
        // Dropping the body cancels a stream the client will not get.
        Framing::Bodiless => return socket.write_all(output).await,
        Framing::Length(length) => Some(length),
        Framing::Chunked => None,
    };
    loop {
        let frame = match futures::poll!(body.frame()) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                socket.write_all(output).await?;
                output.clear();
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let chunk: Bytes = match frame.map_err(io::Error::other)?.into_data() {
            Ok(chunk) if !chunk.is_empty() => chunk,
            // Trailers are not sent (as with hyper, without a `trailer`
            // header), and an empty chunk would end a chunked body.
            _ => continue,
        };
        match &mut remaining {
            Some(remaining) => {
                let length = chunk.len() as u64;
                if length > *remaining {
                    return Err(io::Error::other(
                        "the body is longer than its content-length",
                    ));
                }
                *remaining -= length;
                put(socket, output, &chunk).await?;
            }
            None => {
                // Into the buffer, with no string of its own.
                let _ = write!(output, "{:x}\r\n", chunk.len());
                put(socket, output, &chunk).await?;
                output.extend_from_slice(b"\r\n");
            }
        }
    }
    match remaining {
        Some(0) => {}
        Some(_) => {
            return Err(io::Error::other(
                "the body is shorter than its content-length",
            ))
        }
        None => output.extend_from_slice(b"0\r\n\r\n"),
    }
    socket.write_all(output).await
}

/// Chunks up to this size are copied behind what is already buffered and
/// go out in the same write; larger ones are written from where they are.
const COPY_AT_MOST: usize = 16 * 1024;

/// Queues `chunk` after `output`: copied, if small, else written out with
/// what precedes it.
async fn put(socket: &mut TcpStream, output: &mut Vec<u8>, chunk: &[u8]) -> io::Result<()> {
    if chunk.len() <= COPY_AT_MOST {
        output.extend_from_slice(chunk);
        return Ok(());
    }
    socket.write_all(output).await?;
    output.clear();
    socket.write_all(chunk).await
}
