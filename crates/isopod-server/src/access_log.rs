//! One access record per request to an app, when its response has been
//! sent (or its client went away): app, version, method, path, status,
//! durations, CPU, cold or warm, thread, request id, client and bytes out.
//!
//! Records go through `tracing` under the target `isopod::access`, so they
//! share the process's log format (JSON, or `pretty` for a terminal) and its
//! filter. The response body carries its request's record
//! ([`LoggedBody`]) and writes it when the body ends or is dropped: that is
//! the only point at which the bytes sent and the whole duration are known.
//!
//! Sampling ([`AccessLog::sample`]) is decided when the response is ready,
//! per thread, without a shared counter.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use isopod_runtime::{BoxError, ResponseBody};

/// Which requests get an access record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessLog {
    /// The share of requests logged: 1.0 logs every one (the default), 0.0
    /// none.
    pub sample: f64,
}

impl Default for AccessLog {
    fn default() -> AccessLog {
        AccessLog { sample: 1.0 }
    }
}

impl AccessLog {
    /// No access records.
    pub const OFF: AccessLog = AccessLog { sample: 0.0 };

    /// Whether this request is one of the sampled.
    pub(crate) fn sampled(&self) -> bool {
        if self.sample >= 1.0 {
            return true;
        }
        if self.sample <= 0.0 {
            return false;
        }
        // xorshift64, per thread: no shared state on the request path.
        thread_local! {
            static STATE: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) };
        }
        let draw = STATE.with(|state| {
            let mut x = state.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.set(x);
            x
        });
        (draw >> 11) as f64 / (1u64 << 53) as f64 <= self.sample
    }
}

/// What an access record says, gathered before the body is sent.
pub(crate) struct AccessRecord {
    pub(crate) deployed: Arc<crate::registry::Deployed>,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) status: StatusCode,
    pub(crate) received: Instant,
    /// From receipt to the response's head being ready.
    pub(crate) first_byte: Duration,
    pub(crate) cpu: Option<Duration>,
    pub(crate) cold: bool,
    pub(crate) thread: usize,
    pub(crate) request_id: Arc<str>,
    pub(crate) client: crate::edge::Address,
}

impl AccessRecord {
    fn write(&self, bytes_out: u64, complete: bool) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // Strings and numbers only: a `Display` field would go through
        // `core::fmt`, for every request.
        tracing::info!(
            target: "isopod::access",
            app = self.deployed.version.app(),
            version = &*self.deployed.version_label,
            method = self.method.as_str(),
            path = self.path.as_str(),
            status = self.status.as_u16(),
            duration_ms = ms(self.received.elapsed()),
            first_byte_ms = ms(self.first_byte),
            cpu_ms = self.cpu.map(ms),
            cold = self.cold,
            thread = self.thread,
            request_id = &*self.request_id,
            client = self.client.as_str(),
            bytes_out,
            complete,
            "access"
        );
    }
}

/// A response body on its way to the client, with its request's access
/// record if it has one; the record is written once, when the body ends
/// (`complete`) or is dropped before (the client went away, or the body
/// failed).
pub(crate) struct LoggedBody {
    body: ResponseBody,
    record: Option<Box<AccessRecord>>,
    bytes_out: u64,
    /// The request's id, for the response head (`None` for isopod's own
    /// answers to requests that reached no app).
    request_id: Option<Arc<str>>,
}

impl LoggedBody {
    /// `body` with no record (isopod's own answers, unsampled requests).
    pub(crate) fn unlogged(body: ResponseBody, request_id: Option<Arc<str>>) -> LoggedBody {
        LoggedBody {
            body,
            record: None,
            bytes_out: 0,
            request_id,
        }
    }

    /// `body`, writing `record` when it is done.
    pub(crate) fn logged(
        body: ResponseBody,
        record: Box<AccessRecord>,
        request_id: Arc<str>,
    ) -> LoggedBody {
        LoggedBody {
            body,
            record: Some(record),
            bytes_out: 0,
            request_id: Some(request_id),
        }
    }

    /// The request's id, which the response head carries as `X-Request-Id`.
    pub(crate) fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    fn finish(&mut self, complete: bool) {
        if let Some(record) = self.record.take() {
            record.write(self.bytes_out, complete);
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // An empty body that nobody polled (a HEAD response, a 204) ended
        // as it began.
        let complete = self.body.is_end_stream();
        self.finish(complete);
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if self.record.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.bytes_out += data.len() as u64;
                    }
                }
                Poll::Ready(None) => self.finish(true),
                Poll::Ready(Some(Err(_))) => self.finish(false),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_logs_the_share_asked_for() {
        assert!((0..1000).all(|_| AccessLog::default().sampled()));
        assert!((0..1000).all(|_| !AccessLog::OFF.sampled()));
        let tenth = AccessLog { sample: 0.1 };
        let logged = (0..100_000).filter(|_| tenth.sampled()).count();
        assert!((8_000..12_000).contains(&logged), "{logged}");
    }
}
