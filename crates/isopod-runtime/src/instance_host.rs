//! The runtime's side of the host interface: requests in flight on one
//! instance, and where their responses, failures, log records and
//! WebCrypto work go.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deno_core::ResourceId;
use http::StatusCode;
use isopod_api::{FailureKind, Host, HostResponse, LogLevel, UncaughtKind};
use tokio::sync::mpsc;

use crate::body::{pump_stream, ResponseBody};
use crate::crypto_pool::CryptoPool;
use crate::request::{DispatchError, OutgoingResponse};

pub(crate) type Responder =
    crate::local_channel::OneshotSender<Result<OutgoingResponse, DispatchError>>;

/// A control message to an instance's driver, from outside a window.
pub(crate) enum Control {
    /// The client of this request went away.
    Abort(u32),
}

struct PendingRequest {
    /// Taken when the response (or failure) is sent.
    responder: Option<Responder>,
    /// For log records and kill events (`METHOD /path`, made when needed).
    method: http::Method,
    url: String,
    /// Its `X-Request-Id`, for log records.
    request_id: Arc<str>,
    /// The request body's resource, released when the request completes.
    body: Option<ResourceId>,
    /// JavaScript is done: responded or failed, `waitUntil` settled.
    script_done: bool,
    /// A streaming response body is still being sent.
    streaming: bool,
    /// CPU charged to this request so far (see `enforcer.rs`).
    cpu_used: Duration,
    /// When its response (or failure) went out, or its client went away:
    /// from then on only `waitUntil` work keeps it, for a bounded time.
    answered_at: Option<Instant>,
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        crate::recycle::recycle_buffer(std::mem::take(&mut self.url).into_bytes());
    }
}

impl PendingRequest {
    /// The path and query of the request's absolute URL.
    fn path(&self) -> &str {
        let url = &self.url;
        url.find("://")
            .and_then(|scheme| url[scheme + 3..].find('/').map(|p| scheme + 3 + p))
            .map_or("/", |start| &url[start..])
    }

    /// `METHOD /path`.
    fn label(&self) -> String {
        format!("{} {}", self.method, self.path())
    }
}

/// The host side of one instance: isopod-api's [`Host`] for its ops, and
/// the table of its requests in flight that those ops act on. A request
/// stays here until its response has been sent in full (streams included)
/// and its `waitUntil` work has settled: that is what "in flight" means for
/// draining.
pub(crate) struct InstanceHost {
    /// Set when a bundle is loaded (a spare is created before its app is
    /// known).
    app: RefCell<Arc<str>>,
    /// Where the app's outbound fetches are counted.
    fetches: RefCell<Arc<isopod_api::FetchCounts>>,
    pending: RefCell<HashMap<u32, PendingRequest, rustc_hash::FxBuildHasher>>,
    /// Body resources of completed requests, for the driver to close (the
    /// table cannot reach `OpState` from inside an op).
    released_bodies: RefCell<Vec<ResourceId>>,
    control: mpsc::UnboundedSender<Control>,
    /// How long a streaming response may send nothing (the app's limit).
    stream_idle_timeout: std::cell::Cell<Duration>,
    /// Where the requests' `crypto.subtle` work runs, and what it cost.
    crypto: CryptoPool,
    this: Weak<InstanceHost>,
}

impl InstanceHost {
    pub(crate) fn new(app: Arc<str>, control: mpsc::UnboundedSender<Control>) -> Rc<InstanceHost> {
        Rc::new_cyclic(|this| InstanceHost {
            app: RefCell::new(app),
            fetches: RefCell::default(),
            pending: RefCell::new(HashMap::default()),
            released_bodies: RefCell::new(Vec::new()),
            control,
            stream_idle_timeout: std::cell::Cell::new(
                crate::limits::Limits::default().stream_idle_timeout(),
            ),
            crypto: CryptoPool::default(),
            this: this.clone(),
        })
    }

    pub(crate) fn insert(
        &self,
        id: u32,
        method: http::Method,
        url: String,
        request_id: Arc<str>,
        responder: Responder,
        body: Option<ResourceId>,
    ) {
        self.pending.borrow_mut().insert(
            id,
            PendingRequest {
                responder: Some(responder),
                method,
                url,
                request_id,
                body,
                script_done: false,
                streaming: false,
                cpu_used: Duration::ZERO,
                answered_at: None,
            },
        );
    }

    /// The app this instance serves.
    pub(crate) fn app(&self) -> Arc<str> {
        self.app.borrow().clone()
    }

    /// Adopts the app's streaming idle timeout.
    pub(crate) fn set_stream_idle_timeout(&self, idle: Duration) {
        self.stream_idle_timeout.set(idle);
    }

    /// Names the app in every later log record, and counts its fetches in
    /// `fetches`.
    pub(crate) fn set_app(&self, app: Arc<str>, fetches: Arc<isopod_api::FetchCounts>) {
        *self.app.borrow_mut() = app;
        *self.fetches.borrow_mut() = fetches;
    }

    /// Body resources of requests completed since the last call.
    pub(crate) fn take_released_bodies(&self) -> Vec<ResourceId> {
        std::mem::take(&mut *self.released_bodies.borrow_mut())
    }

    /// Records progress on `id` and removes it once it is complete.
    fn progress(&self, id: u32, update: impl FnOnce(&mut PendingRequest)) {
        let mut pending = self.pending.borrow_mut();
        let Some(request) = pending.get_mut(&id) else {
            return;
        };
        update(request);
        if request.script_done && !request.streaming {
            let mut request = pending.remove(&id).expect("present above");
            if let Some(responder) = request.responder.take() {
                let _ = responder.send(Err(DispatchError::InstanceGone));
            }
            if let Some(body) = request.body {
                self.released_bodies.borrow_mut().push(body);
            }
        }
    }

    /// CPU charged to request `id` so far.
    pub(crate) fn cpu_used(&self, id: u32) -> Duration {
        self.pending
            .borrow()
            .get(&id)
            .map_or(Duration::ZERO, |r| r.cpu_used)
    }

    /// Charges `spent` to request `id`.
    pub(crate) fn charge(&self, id: u32, spent: Duration) {
        if let Some(request) = self.pending.borrow_mut().get_mut(&id) {
            request.cpu_used += spent;
        }
    }

    /// Charges `spent` to every request in flight; false when there is none.
    pub(crate) fn charge_all(&self, spent: Duration) -> bool {
        let mut pending = self.pending.borrow_mut();
        for request in pending.values_mut() {
            request.cpu_used += spent;
        }
        !pending.is_empty()
    }

    /// The instance's crypto thread (see `crypto_pool.rs`).
    pub(crate) fn crypto(&self) -> &CryptoPool {
        &self.crypto
    }

    /// The request in flight with the most CPU charged, and that CPU.
    pub(crate) fn most_charged(&self) -> Option<(u32, Duration)> {
        self.pending
            .borrow()
            .iter()
            .map(|(id, r)| (*id, r.cpu_used))
            .max_by_key(|(_, used)| *used)
    }

    /// Requests not yet complete (response pending, or `waitUntil` work
    /// still running).
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Forgets requests whose response went out more than `timeout` ago but
    /// whose `waitUntil` work (or abandoned handler) has not settled.
    /// Returns their labels, for the log.
    pub(crate) fn expire_lingering(&self, timeout: Duration) -> Vec<String> {
        let mut expired = Vec::new();
        let mut pending = self.pending.borrow_mut();
        pending.retain(|_, request| {
            let lingering = !request.streaming
                && request
                    .answered_at
                    .is_some_and(|at| at.elapsed() >= timeout);
            if lingering {
                expired.push(request.label());
                if let Some(body) = request.body {
                    self.released_bodies.borrow_mut().push(body);
                }
            }
            !lingering
        });
        expired
    }

    /// The client of request `id` went away before its response: from now
    /// on it only lingers until the `waitUntil` timeout.
    pub(crate) fn abandoned(&self, id: u32) {
        if let Some(request) = self.pending.borrow_mut().get_mut(&id) {
            // Outside any window: the last one may be long past.
            request.answered_at.get_or_insert_with(Instant::now);
        }
    }

    /// Answers every request still waiting for a response with
    /// `error_for(its id)`, and forgets them all (the instance is going
    /// away).
    pub(crate) fn fail_all(&self, error_for: impl Fn(u32) -> DispatchError) {
        for (id, mut request) in self.pending.borrow_mut().drain() {
            if let Some(responder) = request.responder.take() {
                let _ = responder.send(Err(error_for(id)));
            }
        }
    }

    /// The method and path of request `id`, if it is in flight.
    pub(crate) fn method_and_path(&self, id: u32) -> Option<(String, String)> {
        self.pending
            .borrow()
            .get(&id)
            .map(|r| (r.method.to_string(), r.path().to_string()))
    }

    /// The `X-Request-Id` of request `id` (empty when it is not in flight).
    pub(crate) fn request_id(&self, id: u32) -> Arc<str> {
        match self.pending.borrow().get(&id) {
            Some(request) => request.request_id.clone(),
            None => Arc::from(""),
        }
    }

    /// `METHOD /path` of request `id`, if it is in flight.
    pub(crate) fn label(&self, id: u32) -> Option<String> {
        self.pending.borrow().get(&id).map(PendingRequest::label)
    }

    fn take_responder(&self, id: u32) -> Option<Responder> {
        self.pending.borrow_mut().get_mut(&id).and_then(|r| {
            r.answered_at = Some(answered_now());
            r.responder.take()
        })
    }

    fn build_response(&self, id: u32, response: HostResponse) -> OutgoingResponse {
        if response.invalid_headers > 0 {
            tracing::warn!(app = %self.app.borrow(), dropped = response.invalid_headers, "dropped response headers HTTP cannot carry");
        }
        let body = match response.body {
            isopod_api::HandlerBody::Empty => ResponseBody::empty(),
            isopod_api::HandlerBody::Bytes(bytes) => ResponseBody::full(bytes),
            isopod_api::HandlerBody::Stream(stream) => {
                // One chunk in flight: the producer runs at the client's pace.
                let (tx, rx) = mpsc::channel(1);
                let control = self.control.clone();
                let table = self.this.clone();
                if let Some(request) = self.pending.borrow_mut().get_mut(&id) {
                    request.streaming = true;
                }
                let idle = self.stream_idle_timeout.get();
                tokio::task::spawn_local(async move {
                    pump_stream(stream, tx, idle, || {
                        let _ = control.send(Control::Abort(id));
                    })
                    .await;
                    if let Some(table) = table.upgrade() {
                        table.progress(id, |r| r.streaming = false);
                    }
                });
                ResponseBody::channel(rx)
            }
        };
        let mut body = body;
        body.set_report(crate::request::ResponseReport {
            cpu: self.cpu_used(id),
            // Ids start at 1 on every instance (`InstanceHandle::dispatch`).
            cold: id == 1,
        });
        let mut outgoing = http::Response::new(body);
        *outgoing.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
        *outgoing.headers_mut() = response.headers;
        outgoing
    }
}

impl Host for InstanceHost {
    fn log(&self, level: LogLevel, id: u32, request: &str, message: &str) {
        let app = self.app.borrow().clone();
        let app = &*app;
        let request_id = self.request_id(id);
        let request_id = &*request_id;
        match level {
            LogLevel::Debug => {
                tracing::debug!(target: "isopod::console", app, request, request_id, "{message}")
            }
            LogLevel::Info => {
                tracing::info!(target: "isopod::console", app, request, request_id, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "isopod::console", app, request, request_id, "{message}")
            }
            LogLevel::Error => {
                tracing::error!(target: "isopod::console", app, request, request_id, "{message}")
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
        let request_id = self.request_id(id);
        let request_id = &*request_id;
        let app = self.app.borrow().clone();
        let app = &*app;
        let error = match kind {
            FailureKind::Threw => {
                tracing::error!(target: "isopod::handler", app, request, request_id, error = %detail, "handler threw");
                DispatchError::HandlerThrew { detail }
            }
            FailureKind::NotAResponse => {
                tracing::error!(target: "isopod::handler", app, request, request_id, error = %detail, "handler returned no Response");
                DispatchError::NotAResponse { detail }
            }
        };
        if let Some(responder) = self.take_responder(id) {
            let _ = responder.send(Err(error));
        }
    }

    fn done(&self, id: u32) {
        self.progress(id, |r| r.script_done = true);
    }

    fn fetched(&self, outcome: isopod_api::FetchOutcome) {
        self.fetches.borrow().count(outcome);
    }

    fn crypto_runtime(&self) -> std::io::Result<tokio::runtime::Handle> {
        self.crypto.handle()
    }

    fn header_map(&self) -> http::HeaderMap {
        crate::recycle::header_map()
    }

    fn uncaught(&self, id: u32, request: &str, kind: UncaughtKind, detail: String) {
        let app = self.app.borrow().clone();
        let app = &*app;
        let request_id = self.request_id(id);
        let request_id = &*request_id;
        match kind {
            UncaughtKind::Rejection => {
                tracing::error!(target: "isopod::handler", app, request, request_id, error = %detail, "unhandled promise rejection")
            }
            UncaughtKind::Exception => {
                tracing::error!(target: "isopod::handler", app, request, request_id, error = %detail, "uncaught exception")
            }
        }
    }
}

/// The table as the `Rc<dyn Host>` that goes into `OpState`.
pub(crate) fn as_host(table: &Rc<InstanceHost>) -> Rc<dyn Host> {
    table.clone()
}

/// When a request was answered, for the `waitUntil` bound: the entry of the
/// window it was answered in (responses and failures come from JavaScript,
/// so inside one), early by at most the window's length, for no clock read.
fn answered_now() -> Instant {
    crate::window::entered_at().unwrap_or_else(Instant::now)
}
