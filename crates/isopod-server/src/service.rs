//! One request, from the HTTP layer (hyper's or isopod's own, see `h1`) to
//! an instance and back.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use isopod_pool::PoolError;
use isopod_runtime::{DispatchError, HeaderList, IncomingRequest, ResponseBody};

use crate::access_log::{AccessRecord, LoggedBody};
use crate::edge::{Origin, Peer};
use crate::head_deadline::{Busy, WatchedBody};
use crate::http_semantics::{
    end_to_end_lines, origin_target, request_target, strip_hop_by_hop, BadRequest, Target,
};
use crate::listener::ListenerContext;
use crate::registry::Deployed;
use crate::response_deadline::within;

/// Answers one request with the app's handler.
///
/// The request is prepared at once, when hyper hands it over, not when the
/// returned future is first polled: hyper reads ahead on the connection in
/// between, and the request's head still holding its read buffer then
/// costs a fresh buffer (see [`prepare`]).
///
/// `busy` keeps the connection safe from the head timeout until the
/// response's body has been sent.
pub(crate) fn handle(
    connection: Rc<ListenerContext>,
    peer: Peer,
    request: Request<Incoming>,
    busy: Busy,
) -> impl Future<Output = Result<Response<WatchedBody>, std::convert::Infallible>> {
    let prepared = prepare(&connection, &peer, request);
    async move {
        let mut response = prepared.answer(&connection).await;
        // hyper writes the head from the map (isopod's own path writes the
        // id itself, `h1::send`).
        if let Some(id) = response.body().request_id() {
            if let Ok(id) = HeaderValue::from_str(id) {
                response.headers_mut().insert(&X_REQUEST_ID, id);
            }
        }
        Ok(response.map(|body| WatchedBody::new(body, busy)))
    }
}

/// Waits for the app's admission and its instance's response.
async fn serve(
    connection: &ListenerContext,
    deployed: &Deployed,
    incoming: IncomingRequest,
    record: Option<Box<AccessRecord>>,
) -> Response<LoggedBody> {
    let received = incoming.received;
    let request_id = incoming.request_id.clone();
    let response = respond(connection, deployed, incoming).await;
    let first_byte = received.elapsed();
    let report = response.body().report();
    let (cpu, cold) = report.map_or((None, false), |r| (Some(r.cpu), r.cold));
    deployed
        .metrics
        .record(response.status(), first_byte, cpu, cold);
    match record {
        Some(mut record) => {
            record.status = response.status();
            record.first_byte = first_byte;
            record.cpu = cpu;
            record.cold = cold;
            response.map(|body| LoggedBody::logged(body, record, request_id))
        }
        None => response.map(|body| LoggedBody::unlogged(body, Some(request_id))),
    }
}

pub(crate) static X_REQUEST_ID: header::HeaderName =
    header::HeaderName::from_static("x-request-id");

/// The handler's response, or isopod's answer for the app (refused by its
/// concurrency cap, too slow, failed).
async fn respond(
    connection: &ListenerContext,
    deployed: &Deployed,
    incoming: IncomingRequest,
) -> Response<ResponseBody> {
    let version = &deployed.version;
    let timeout = version.config.limits.response_timeout();
    // The wait is boxed: its future would otherwise make every request's
    // larger, and hyper moves that future on each request.
    let admitted = match deployed.admission.try_admit() {
        Some(permit) => Ok(permit),
        None => Box::pin(deployed.admission.admit(timeout)).await,
    };
    let _turn = match admitted {
        Ok(permit) => permit,
        Err(refused) => {
            tracing::warn!(app = %version.app(), ?refused, "request refused by the app's concurrency cap");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "Service Unavailable: the app already serves {} requests at once and as many wait",
                    deployed.admission.limit()
                ),
            );
        }
    };
    // Counted from the request's receipt (admission waits included).
    let deadline = incoming.received + timeout;
    let dispatched = within(deadline, connection.thread.dispatch(version, incoming));
    let Ok(dispatched) = dispatched.await else {
        // Dropping the dispatch aborts the request's signal; its instance
        // keeps it only until the `waitUntil` bound.
        tracing::warn!(target: "isopod::handler", app = %version.app(), timeout_ms = timeout.as_millis() as u64, "no response before the response timeout; answered 504");
        return text(
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "Gateway Timeout: the app did not respond within {} ms",
                timeout.as_millis()
            ),
        );
    };
    let response = match dispatched {
        Ok(mut response) => {
            strip_hop_by_hop(response.headers_mut());
            response
        }
        Err(PoolError::Instance(error)) => {
            tracing::error!(app = %version.app(), %error, "could not start an instance");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable: the app could not be started",
            )
        }
        Err(PoolError::OverMemoryBudget) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: the server is over its memory budget and no idle instance is left to evict",
        ),
        Err(PoolError::AtCapacity) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: every instance is busy and the pool is at its cap",
        ),
        Err(PoolError::ShutDown | PoolError::Thread(_)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: the server is shutting down",
        ),
        Err(PoolError::Dispatch(DispatchError::HandlerThrew { .. })) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error: the handler threw an exception (see the app's log)",
        ),
        Err(PoolError::Dispatch(DispatchError::NotAResponse { detail })) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Internal Server Error: {detail}"),
        ),
        Err(PoolError::Dispatch(error @ DispatchError::Killed { .. })) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Service Unavailable: {error}"),
        ),
        Err(PoolError::Dispatch(DispatchError::InstanceGone)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: the app's instance stopped before answering",
        ),
    };
    response
}

/// A request made ready for its app, or answered by isopod itself (no
/// route, a bad `Host`, a body over the app's limit).
///
/// isopod's own answers are boxed, so that the common case stays small
/// (checked at compile time below): a prepared request is moved on its way
/// into its future. It was 128 bytes, which a move copies inline; the
/// request id (16 bytes) and the access record's pointer (8) took it past
/// that, to 152, and a move is now a `memcpy` call (the cost per request
/// before and after is in docs/performance.md).
pub(crate) enum Prepared {
    /// For the app, with its access record if the request is sampled.
    ForApp(Arc<Deployed>, IncomingRequest, Option<Box<AccessRecord>>),
    Answered(Box<Response<ResponseBody>>),
}

const _: () = assert!(
    std::mem::size_of::<Prepared>() <= 152,
    "a prepared request grew"
);

impl Prepared {
    /// The response: the handler's, or isopod's own answer.
    pub(crate) async fn answer(self, connection: &ListenerContext) -> Response<LoggedBody> {
        match self {
            Prepared::ForApp(deployed, incoming, record) => {
                serve(connection, &deployed, incoming, record).await
            }
            Prepared::Answered(answer) => answer.map(|body| LoggedBody::unlogged(body, None)),
        }
    }
}

/// Everything about a request that needs no waiting: its URL, its app, its
/// size against the app's limit, its headers in the form an instance takes.
///
/// Invariant: nothing it returns refers to hyper's read buffer (the URI and
/// header values do; they are dropped here). hyper reads ahead on the
/// connection while the handler runs, and a buffer still shared then is
/// replaced by a fresh allocation, on every request.
fn prepare(connection: &ListenerContext, peer: &Peer, request: Request<Incoming>) -> Prepared {
    let received = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (deployed, mut url) = match route(
        connection,
        request_target(&parts),
        parts.uri.path(),
        declared,
    ) {
        Ok(routed) => routed,
        Err(unrouted) => return Prepared::Answered(Box::new(unrouted.answer())),
    };
    let (mut headers, edge_lines) = end_to_end_lines(&parts.headers);
    let origin = crate::edge::vet(
        &mut headers,
        edge_lines,
        peer,
        &connection.edge.trusted_proxies,
    );
    let record = access_record(
        connection,
        &deployed,
        &parts.method,
        &url,
        &origin,
        received,
    );
    if origin.https {
        as_https(&mut url);
    }
    // A chunked body past the cap fails the handler's read of it.
    let body = (!body.is_end_stream()).then(|| {
        let max_body = deployed.version.config.limits.max_request_body_bytes();
        let cap = usize::try_from(max_body).unwrap_or(usize::MAX);
        http_body_util::Limited::new(body, cap)
            .map_err(|error| -> isopod_runtime::BoxError {
                if error.is::<http_body_util::LengthLimitError>() {
                    "the request body exceeds the app's size limit".into()
                } else {
                    error
                }
            })
            .boxed()
    });
    let incoming = IncomingRequest {
        url,
        headers,
        method: parts.method,
        version: parts.version,
        body,
        received,
        request_id: origin.request_id,
    };
    Prepared::ForApp(deployed, incoming, record)
}

/// `http://…` as `https://…`: the scheme the client used with the proxy in
/// front of isopod.
fn as_https(url: &mut String) {
    if url.starts_with("http://") {
        url.insert(4, 's');
    }
}

/// The request's access record, begun, if the access log samples it.
fn access_record(
    connection: &ListenerContext,
    deployed: &Arc<Deployed>,
    method: &Method,
    url: &str,
    origin: &Origin,
    received: std::time::Instant,
) -> Option<Box<AccessRecord>> {
    if !connection.edge.access_log.sampled() {
        return None;
    }
    let path = url
        .find("://")
        .and_then(|scheme| url[scheme + 3..].find('/').map(|p| scheme + 3 + p))
        .map_or("/", |start| &url[start..]);
    Some(Box::new(AccessRecord {
        deployed: deployed.clone(),
        method: method.clone(),
        path: path.to_string(),
        status: StatusCode::OK,
        received,
        first_byte: std::time::Duration::ZERO,
        cpu: None,
        cold: false,
        thread: connection.thread.index(),
        request_id: origin.request_id.clone(),
        client: origin.client,
    }))
}

/// [`prepare`] for a request without a body whose head isopod's own HTTP/1.1
/// path parsed (see `h1`): its method, origin-form target, `Host` header
/// value and end-to-end header lines.
pub(crate) fn prepare_bodiless(
    connection: &ListenerContext,
    peer: &Peer,
    method: Method,
    path_and_query: &str,
    host: Option<&[u8]>,
    mut headers: HeaderList,
    edge_lines: bool,
) -> Prepared {
    let received = std::time::Instant::now();
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path);
    match route(connection, origin_target(host, path_and_query), path, None) {
        Ok((deployed, mut url)) => {
            let origin = crate::edge::vet(
                &mut headers,
                edge_lines,
                peer,
                &connection.edge.trusted_proxies,
            );
            let record = access_record(connection, &deployed, &method, &url, &origin, received);
            if origin.https {
                as_https(&mut url);
            }
            Prepared::ForApp(
                deployed,
                IncomingRequest {
                    method,
                    version: http::Version::HTTP_11,
                    url,
                    headers,
                    body: None,
                    received,
                    request_id: origin.request_id,
                },
                record,
            )
        }
        Err(unrouted) => Prepared::Answered(Box::new(unrouted.answer())),
    }
}

/// Why isopod answers a request itself instead of routing it to an app.
enum Unrouted {
    /// 400: no usable target.
    BadTarget(BadRequest),
    /// 404.
    NoRoute,
    /// 413: the declared body is over the app's limit (in MiB).
    BodyTooLarge(u64),
}

impl Unrouted {
    fn answer(self) -> Response<ResponseBody> {
        match self {
            Unrouted::BadTarget(bad) => {
                // After a request isopod could not read as one for an app,
                // the connection is not trusted with another.
                let mut answer = text(StatusCode::BAD_REQUEST, bad.reason());
                answer
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                answer
            }
            Unrouted::NoRoute => text(
                StatusCode::NOT_FOUND,
                "Not Found: no app is routed for this host and path",
            ),
            Unrouted::BodyTooLarge(max_mb) => text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Payload Too Large: a request body is at most {max_mb} MiB for this app"),
            ),
        }
    }
}

/// The app a request goes to and the URL its handler sees, or why isopod
/// answers it itself.
fn route(
    connection: &ListenerContext,
    target: Result<Target<'_>, BadRequest>,
    path: &str,
    declared_length: Option<u64>,
) -> Result<(Arc<Deployed>, String), Unrouted> {
    let target = target.map_err(Unrouted::BadTarget)?;
    let deployed = connection.apps.with(|apps| match &connection.dedicated {
        Some(name) => apps.app(name).cloned(),
        None => apps.route(target.host, path).cloned(),
    });
    let deployed = deployed.ok_or(Unrouted::NoRoute)?;
    let limits = &deployed.version.config.limits;
    if declared_length.is_some_and(|length| length > limits.max_request_body_bytes()) {
        return Err(Unrouted::BodyTooLarge(limits.max_request_body_mb));
    }
    Ok((deployed, target.url))
}

/// A short plain-text answer from isopod itself.
pub(crate) fn text(status: StatusCode, reason: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(format!("{reason}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
