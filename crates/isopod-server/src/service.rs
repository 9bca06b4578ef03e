//! One request, from hyper to an instance and back.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use isopod_pool::{PoolError, PoolThread};
use isopod_runtime::{DispatchError, IncomingRequest, ResponseBody};

use crate::http_semantics::{absolute_url, strip_hop_by_hop};
use crate::registry::Registry;

/// What every connection accepted on one listener of one thread shares.
pub(crate) struct Connection {
    /// The worker thread's view of the pool.
    pub(crate) thread: PoolThread,
    /// The deployed apps.
    pub(crate) registry: Arc<Registry>,
    /// The app this listener belongs to, if it is an app's own port.
    pub(crate) dedicated: Option<Arc<str>>,
}

/// Answers one request with the app's handler.
pub(crate) async fn handle(
    connection: Rc<Connection>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let received = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let url = match absolute_url(&parts) {
        Ok(url) => url,
        Err(bad) => return Ok(text(StatusCode::BAD_REQUEST, bad.reason())),
    };
    let apps = connection.registry.snapshot();
    let deployed = match &connection.dedicated {
        Some(name) => apps.app(name),
        None => {
            let host = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            });
            apps.route(host.unwrap_or_default(), parts.uri.path())
        }
    };
    let Some(deployed) = deployed else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "Not Found: no app is routed for this host and path",
        ));
    };
    let version = deployed.version.clone();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let body = (!body.is_end_stream()).then(|| body.map_err(Into::into).boxed());
    let incoming = IncomingRequest {
        method: parts.method,
        url,
        headers,
        body,
        received,
    };

    let response = match connection.thread.dispatch(&version, incoming).await {
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
        Err(PoolError::Dispatch(DispatchError::InstanceGone)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: the app's instance stopped before answering",
        ),
    };
    Ok(response)
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
