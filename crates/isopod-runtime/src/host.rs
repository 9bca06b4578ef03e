//! The runtime's side of the host interface: requests in flight on one
//! instance, and where their responses, failures and log records go.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use isopod_api::{FailureKind, Host, HostResponse, LogLevel, UncaughtKind};
use tokio::sync::{mpsc, oneshot};

use crate::body::{pump_stream, ResponseBody};
use crate::request::{DispatchError, OutgoingResponse};

pub(crate) type Responder = oneshot::Sender<Result<OutgoingResponse, DispatchError>>;

/// A control message to an instance's driver, from outside a window.
pub(crate) enum Control {
    /// The client of this request went away.
    Abort(u32),
}

struct PendingRequest {
    /// Taken when the response (or failure) is sent.
    responder: Option<Responder>,
    /// `METHOD /path` for log records.
    label: Arc<str>,
}

/// The requests in flight on one instance.
pub(crate) struct RequestTable {
    app: Arc<str>,
    pending: RefCell<HashMap<u32, PendingRequest>>,
    control: mpsc::UnboundedSender<Control>,
    served: Cell<u64>,
}

impl RequestTable {
    pub(crate) fn new(app: Arc<str>, control: mpsc::UnboundedSender<Control>) -> RequestTable {
        RequestTable {
            app,
            pending: RefCell::new(HashMap::new()),
            control,
            served: Cell::new(0),
        }
    }

    pub(crate) fn insert(&self, id: u32, label: Arc<str>, responder: Responder) {
        self.pending.borrow_mut().insert(
            id,
            PendingRequest {
                responder: Some(responder),
                label,
            },
        );
    }

    /// Requests not yet complete (response pending, or `waitUntil` work
    /// still running).
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Requests completed so far.
    pub(crate) fn served(&self) -> u64 {
        self.served.get()
    }

    /// Answers every request still waiting for a response with `error`, and
    /// forgets them all (the instance is going away).
    pub(crate) fn fail_all(&self, error: DispatchError) {
        for (_, mut request) in self.pending.borrow_mut().drain() {
            if let Some(responder) = request.responder.take() {
                let _ = responder.send(Err(error.clone()));
            }
        }
    }

    fn label(&self, id: u32) -> Option<Arc<str>> {
        self.pending.borrow().get(&id).map(|r| r.label.clone())
    }

    fn take_responder(&self, id: u32) -> Option<Responder> {
        self.pending
            .borrow_mut()
            .get_mut(&id)
            .and_then(|r| r.responder.take())
    }

    fn build_response(&self, id: u32, response: HostResponse) -> OutgoingResponse {
        let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
        let mut builder = http::Response::builder().status(status);
        if let Some(headers) = builder.headers_mut() {
            for (name, value) in response.headers {
                match (
                    HeaderName::from_bytes(&name),
                    HeaderValue::from_bytes(&value),
                ) {
                    (Ok(name), Ok(value)) => {
                        headers.append(name, value);
                    }
                    _ => tracing::warn!(app = %self.app, "dropped an invalid response header"),
                }
            }
        }
        let body = match response.body {
            isopod_api::ResponseBody::Empty => ResponseBody::empty(),
            isopod_api::ResponseBody::Bytes(bytes) => ResponseBody::full(bytes),
            isopod_api::ResponseBody::Stream(stream) => {
                // One chunk in flight: the producer runs at the client's pace.
                let (tx, rx) = mpsc::channel(1);
                let control = self.control.clone();
                tokio::task::spawn_local(pump_stream(stream, tx, move || {
                    let _ = control.send(Control::Abort(id));
                }));
                ResponseBody::channel(rx)
            }
        };
        builder
            .body(body)
            .unwrap_or_else(|_| http::Response::new(ResponseBody::full(Bytes::new())))
    }
}

impl Host for RequestTable {
    fn log(&self, level: LogLevel, request: &str, message: &str) {
        let app = &*self.app;
        match level {
            LogLevel::Debug => {
                tracing::debug!(target: "isopod::console", app, request, "{message}")
            }
            LogLevel::Info => tracing::info!(target: "isopod::console", app, request, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "isopod::console", app, request, "{message}"),
            LogLevel::Error => {
                tracing::error!(target: "isopod::console", app, request, "{message}")
            }
        }
    }

    fn respond(&self, id: u32, response: HostResponse) {
        let Some(responder) = self.take_responder(id) else {
            return;
        };
        let response = self.build_response(id, response);
        let _ = responder.send(Ok(response));
    }

    fn fail(&self, id: u32, kind: FailureKind, detail: String) {
        let label = self.label(id);
        let request = label.as_deref().unwrap_or("");
        let app = &*self.app;
        let error = match kind {
            FailureKind::Threw => {
                tracing::error!(target: "isopod::handler", app, request, error = %detail, "handler threw");
                DispatchError::HandlerThrew { detail }
            }
            FailureKind::NotAResponse => {
                tracing::error!(target: "isopod::handler", app, request, error = %detail, "handler returned no Response");
                DispatchError::NotAResponse { detail }
            }
        };
        if let Some(responder) = self.take_responder(id) {
            let _ = responder.send(Err(error));
        }
    }

    fn done(&self, id: u32) {
        if let Some(mut request) = self.pending.borrow_mut().remove(&id) {
            self.served.set(self.served.get() + 1);
            if let Some(responder) = request.responder.take() {
                let _ = responder.send(Err(DispatchError::InstanceGone));
            }
        }
    }

    fn uncaught(&self, request: &str, kind: UncaughtKind, detail: String) {
        let app = &*self.app;
        match kind {
            UncaughtKind::Rejection => {
                tracing::error!(target: "isopod::handler", app, request, error = %detail, "unhandled promise rejection")
            }
            UncaughtKind::Exception => {
                tracing::error!(target: "isopod::handler", app, request, error = %detail, "uncaught exception")
            }
        }
    }
}

/// Wraps the table for the `Rc<dyn Host>` slot in `OpState`.
pub(crate) fn as_host(table: &Rc<RequestTable>) -> Rc<dyn Host> {
    table.clone()
}
