//! One request, from hyper to an instance and back.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use isopod_runtime::{
    DispatchError, IncomingRequest, Instance, InstanceError, InstanceHandle, ResponseBody,
};
use tokio::sync::Mutex;

use crate::http_semantics::{absolute_url, strip_hop_by_hop};
use crate::server::AppSpec;

/// An app as one worker thread serves it: its spec and the thread's running
/// instance, replaced when it stops.
pub(crate) struct AppSlot {
    spec: Arc<AppSpec>,
    current: Mutex<Option<InstanceHandle>>,
}

impl AppSlot {
    pub(crate) fn new(spec: Arc<AppSpec>) -> AppSlot {
        AppSlot {
            spec,
            current: Mutex::new(None),
        }
    }

    /// The thread's running instance of the app, created (once, however many
    /// requests ask at the same time) if there is none.
    pub(crate) async fn instance(&self) -> Result<InstanceHandle, InstanceError> {
        let mut current = self.current.lock().await;
        if let Some(handle) = current.as_ref().filter(|h| !h.is_closed()) {
            return Ok(handle.clone());
        }
        let mut instance = Instance::blank(&self.spec.config)?;
        instance.load(&self.spec.bundle, &self.spec.config).await?;
        let handle = instance.spawn();
        *current = Some(handle.clone());
        Ok(handle)
    }
}

/// Answers one request with the app's handler.
pub(crate) async fn handle(
    app: Rc<AppSlot>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    let (parts, body) = request.into_parts();
    let url = match absolute_url(&parts) {
        Ok(url) => url,
        Err(bad) => return Ok(text(StatusCode::BAD_REQUEST, bad.reason())),
    };
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let body = (!body.is_end_stream()).then(|| body.map_err(Into::into).boxed());
    let incoming = IncomingRequest {
        method: parts.method,
        url,
        headers,
        body,
    };

    let instance = match app.instance().await {
        Ok(instance) => instance,
        Err(error) => {
            tracing::error!(app = %app.spec.config.name, error = %error, "could not start an instance");
            return Ok(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable: the app could not be started",
            ));
        }
    };
    let response = match instance.dispatch(incoming).await {
        Ok(mut response) => {
            strip_hop_by_hop(response.headers_mut());
            response
        }
        Err(DispatchError::HandlerThrew { .. }) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error: the handler threw an exception (see the app's log)",
        ),
        Err(DispatchError::NotAResponse { detail }) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Internal Server Error: {detail}"),
        ),
        Err(DispatchError::InstanceGone) => text(
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
