//! Bodies crossing between the HTTP layer and an isolate.
//!
//! Both directions stream: a request body becomes a resource that the
//! handler's `request.body` reads chunk by chunk as the client sends them;
//! a `ReadableStream` response body is pumped from its resource into a
//! bounded channel that the HTTP layer drains, so a slow client slows the
//! producer down and a gone client cancels it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use deno_core::{AsyncRefCell, AsyncResult, BufView, CancelHandle, RcRef, Resource};
use deno_error::JsErrorBox;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// Boxed error type of bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the HTTP layer hands it over.
pub type RequestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// The request body, exposed to JavaScript as a readable resource.
pub(crate) struct RequestBodyResource {
    body: AsyncRefCell<RequestBody>,
    /// Bytes of a frame larger than the reader asked for, served next.
    leftover: RefCell<Bytes>,
    cancel: CancelHandle,
}

impl RequestBodyResource {
    pub(crate) fn new(body: RequestBody) -> RequestBodyResource {
        RequestBodyResource {
            body: AsyncRefCell::new(body),
            leftover: RefCell::new(Bytes::new()),
            cancel: CancelHandle::new(),
        }
    }

    async fn read_chunk(self: Rc<Self>, limit: usize) -> Result<BufView, JsErrorBox> {
        let limit = limit.max(1);
        {
            let mut leftover = self.leftover.borrow_mut();
            if !leftover.is_empty() {
                let n = limit.min(leftover.len());
                return Ok(BufView::from(leftover.split_to(n)));
            }
        }
        let mut body = RcRef::map(&self, |r| &r.body).borrow_mut().await;
        loop {
            let frame = body
                .frame()
                .await
                .transpose()
                .map_err(|e| JsErrorBox::generic(format!("request body: {e}")))?;
            let Some(frame) = frame else {
                return Ok(BufView::empty());
            };
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers
            };
            if data.is_empty() {
                continue;
            }
            if data.len() > limit {
                *self.leftover.borrow_mut() = data.split_off(limit);
            }
            return Ok(BufView::from(data));
        }
    }
}

impl Resource for RequestBodyResource {
    fn name(&self) -> Cow<'_, str> {
        "requestBody".into()
    }

    fn read(self: Rc<Self>, limit: usize) -> AsyncResult<BufView> {
        let cancel = RcRef::map(&self, |r| &r.cancel);
        Box::pin(async move {
            use deno_core::CancelFuture as _;
            self.read_chunk(limit)
                .or_cancel(cancel)
                .await
                .map_err(|_| JsErrorBox::generic("request body read cancelled"))?
        })
    }

    fn close(self: Rc<Self>) {
        self.cancel.cancel();
    }
}

/// A response body on its way to the client: known bytes, or a channel fed
/// by the isolate's thread. `Send`, so it can cross to the thread that owns
/// the connection.
pub struct ResponseBody {
    kind: BodyKind,
    /// What the instance reports about the request, for the access log:
    /// carried here rather than in the response's extensions, which would
    /// cost an allocation per response.
    report: Option<crate::request::ResponseReport>,
}

enum BodyKind {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, BoxError>>),
}

impl ResponseBody {
    /// A body of known bytes (possibly none).
    pub fn full(bytes: Bytes) -> ResponseBody {
        ResponseBody {
            kind: BodyKind::Full((!bytes.is_empty()).then_some(bytes)),
            report: None,
        }
    }

    /// What the instance reported about the request this body answers
    /// (`None` for isopod's own answers).
    pub fn report(&self) -> Option<crate::request::ResponseReport> {
        self.report
    }

    pub(crate) fn set_report(&mut self, report: crate::request::ResponseReport) {
        self.report = Some(report);
    }

    /// An empty body.
    pub fn empty() -> ResponseBody {
        ResponseBody::full(Bytes::new())
    }

    pub(crate) fn channel(rx: mpsc::Receiver<Result<Bytes, BoxError>>) -> ResponseBody {
        ResponseBody {
            kind: BodyKind::Channel(rx),
            report: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Channel(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.kind, BodyKind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            BodyKind::Channel(_) => SizeHint::default(),
        }
    }
}

/// Reads a response stream's resource into `tx` until the stream ends, the
/// receiver goes away (the client disconnected), or the stream fails. On an
/// early end the resource is closed, which cancels the JavaScript stream.
///
/// A producer that sends nothing for `idle` is cut off: the client's
/// response ends with an error and the handler's stream is cancelled as if
/// the client had gone (so server-sent events live as long as they keep
/// sending).
pub(crate) async fn pump_stream(
    stream: Rc<dyn Resource>,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
    idle: std::time::Duration,
    on_disconnect: impl FnOnce(),
) {
    const CHUNK: usize = 64 * 1024;
    loop {
        let read = tokio::select! {
            biased;
            _ = tx.closed() => {
                stream.close();
                on_disconnect();
                return;
            }
            read = tokio::time::timeout(idle, stream.clone().read(CHUNK)) => read,
        };
        let Ok(read) = read else {
            let message = format!(
                "the streaming response sent nothing for {} ms; closed",
                idle.as_millis()
            );
            tracing::warn!(target: "isopod::handler", "{message}");
            let _ = tx.try_send(Err(message.into()));
            stream.close();
            on_disconnect();
            return;
        };
        match read {
            Ok(view) if view.is_empty() => return,
            Ok(view) => {
                let bytes = Bytes::copy_from_slice(&view);
                if tx.send(Ok(bytes)).await.is_err() {
                    stream.close();
                    on_disconnect();
                    return;
                }
            }
            Err(error) => {
                let message = format!("response stream failed: {error}");
                tracing::warn!("{message}");
                let _ = tx.send(Err(message.into())).await;
                stream.close();
                return;
            }
        }
    }
}
