//! What crosses between the HTTP layer and an instance: an incoming request,
//! and the outcome of dispatching it.

use http::{HeaderMap, Method};

use crate::body::{RequestBody, ResponseBody};

/// A request on its way into an isolate. The HTTP layer has already made the
/// URL absolute and removed hop-by-hop headers.
pub struct IncomingRequest {
    /// The method.
    pub method: Method,
    /// The absolute URL the handler sees as `request.url`.
    pub url: String,
    /// Header lines, in order, repeated names kept.
    pub headers: HeaderMap,
    /// The body, or `None` for a request without one.
    pub body: Option<RequestBody>,
    /// When the HTTP layer received the request: the instance measures how
    /// long requests wait before their handler runs from here.
    pub received: std::time::Instant,
}

/// The response to an [`IncomingRequest`].
pub type OutgoingResponse = http::Response<ResponseBody>;

/// Why a dispatched request has no response from the handler.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DispatchError {
    /// The handler threw or its promise rejected; the detail (the JS stack)
    /// has been logged.
    #[error("the handler threw an exception")]
    HandlerThrew {
        /// The error and its stack, source-mapped where possible.
        detail: String,
    },
    /// The handler settled with something that is not a `Response`.
    #[error("{detail}")]
    NotAResponse {
        /// What it returned instead.
        detail: String,
    },
    /// A limit cut the instance off; the isolate is gone.
    #[error("{}", if *this_request { reason.describe() } else { "the app's instance was stopped by a limit another request broke" })]
    Killed {
        /// Which limit.
        reason: crate::limits::KillReason,
        /// Whether this request broke it (otherwise it was in flight on the
        /// same isolate).
        this_request: bool,
    },
    /// The instance stopped (its event loop failed, or it was shut down)
    /// before the request was answered.
    #[error("the instance stopped before answering")]
    InstanceGone,
}
