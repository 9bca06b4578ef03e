//! Slow-client protection at a second's precision, with no timer per
//! request.
//!
//! A connection must send each request head within [`HEAD_TIMEOUT`] of
//! becoming idle (accepted, or its last response sent in full); one that
//! does not is closed. That is hyper's `header_read_timeout`, which also
//! closes idle keep-alive connections. hyper implements it with a fresh
//! boxed sleep in the runtime's timer wheel for every request head (an
//! allocation, a wheel insertion and a removal per request). Here each
//! worker thread instead runs one sweep a second over its connections.
//!
//! Invariants:
//! - A connection with a request in the service or a response still being
//!   sent (a stream included, however long it lasts) is never closed by
//!   the sweep; [`Busy`] guards mark those, and the last one dropped makes
//!   the connection idle again.
//! - Everything here belongs to one worker thread (`Rc`, thread-locals): a
//!   connection's watch lives on the thread its task runs on.
//! - The sweep runs only while its thread has connections, so an idle
//!   thread is not woken each second.
//! - Once the server is stopping, the sweep closes every idle connection
//!   at its next round (a busy one closes after its response, in `h1` or
//!   by hyper's graceful shutdown), so that no connection waits for a
//!   timeout to let the process exit.
//! - The sweep is also the thread's clock for the `date` of the responses
//!   isopod's own HTTP/1.1 path writes (`date::refresh_date`): refreshed
//!   when the sweep starts and at each of its rounds, so a response never
//!   reads the clock itself.

use std::cell::{Cell, OnceCell, RefCell};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use isopod_runtime::BoxError;

use crate::access_log::LoggedBody;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::periodic::{every_until_idle, Sweeper};

/// How long a client may take to send a request head, counted from when its
/// connection became idle (slow-client protection). Enforced at a second's
/// precision: a connection is closed after between this and one second
/// more.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The sweep's period, and so the unit of its clock.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One connection, as its thread's sweep sees it.
pub(crate) struct HeadWatch {
    /// Requests handed to the service whose response is not yet sent in full.
    busy: Cell<u32>,
    /// The sweep's tick when the connection last became idle.
    idle_since: Cell<u64>,
    /// Ends the connection's task (and so closes its socket).
    abort: OnceCell<AbortHandle>,
}

impl HeadWatch {
    /// A watch for a connection accepted now. It is swept once
    /// [`HeadWatch::start`] has given it the connection's task.
    pub(crate) fn new() -> Rc<HeadWatch> {
        Rc::new(HeadWatch {
            busy: Cell::new(0),
            idle_since: Cell::new(SWEEP.with(|sweep| sweep.tick.get())),
            abort: OnceCell::new(),
        })
    }

    /// Starts sweeping this connection: `abort` ends its task, and idle, it
    /// is closed once `draining` turns true.
    pub(crate) fn start(self: &Rc<Self>, abort: AbortHandle, draining: &watch::Receiver<bool>) {
        let _ = self.abort.set(abort);
        SWEEP.with(|sweep| {
            sweep
                .draining
                .borrow_mut()
                .get_or_insert_with(|| draining.clone());
            sweep.watched.borrow_mut().push(Rc::downgrade(self));
            if sweep.sweeper.ensure_running(run_sweep) {
                // The sweep keeps the responses' date; it was stopped.
                crate::date::refresh_date();
            }
        });
    }

    /// Marks a request head as received: the connection is busy until the
    /// returned guard is dropped (with the response's body, once sent).
    pub(crate) fn request_started(self: &Rc<Self>) -> Busy {
        self.busy.set(self.busy.get() + 1);
        Busy(self.clone())
    }

    /// Whether the sweep at `tick` should close this connection.
    fn overdue(&self, tick: u64) -> bool {
        self.busy.get() == 0 && tick.saturating_sub(self.idle_since.get()) > HEAD_TIMEOUT.as_secs()
    }
}

/// Keeps a connection busy (see [`HeadWatch::request_started`]).
pub(crate) struct Busy(Rc<HeadWatch>);

impl Drop for Busy {
    fn drop(&mut self) {
        let watch = &self.0;
        let busy = watch.busy.get().saturating_sub(1);
        watch.busy.set(busy);
        if busy == 0 {
            // `try_with`: a connection may be dropped as its thread exits.
            let tick = SWEEP.try_with(|sweep| sweep.tick.get()).unwrap_or(0);
            watch.idle_since.set(tick);
        }
    }
}

/// A response body that keeps its connection busy until hyper has sent it
/// in full (or given up on it) and dropped it.
pub(crate) struct WatchedBody {
    body: LoggedBody,
    _busy: Busy,
}

impl WatchedBody {
    /// `body`, holding `busy` for as long as it lives.
    pub(crate) fn new(body: LoggedBody, busy: Busy) -> WatchedBody {
        WatchedBody { body, _busy: busy }
    }
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A worker thread's sweep: its clock, in ticks of [`SWEEP_EVERY`], and the
/// connections it watches.
struct Sweep {
    tick: Cell<u64>,
    watched: RefCell<Vec<Weak<HeadWatch>>>,
    sweeper: Sweeper,
    /// True once the server is stopping (one server per thread's sweep).
    draining: RefCell<Option<watch::Receiver<bool>>>,
}

thread_local! {
    static SWEEP: Sweep = const {
        Sweep {
            tick: Cell::new(0),
            watched: RefCell::new(Vec::new()),
            sweeper: Sweeper::new(),
            draining: RefCell::new(None),
        }
    };
}

/// Once a second: advances the thread's tick, forgets connections that have
/// ended, and closes those idle for longer than [`HEAD_TIMEOUT`]. Returns
/// when the thread has no connections left (the next one starts it again).
async fn run_sweep() {
    every_until_idle(SWEEP_EVERY, || {
        crate::date::refresh_date();
        SWEEP.with(|sweep| {
            let tick = sweep.tick.get() + 1;
            sweep.tick.set(tick);
            let draining = sweep
                .draining
                .borrow()
                .as_ref()
                .is_some_and(|draining| !matches!(draining.has_changed(), Ok(false)));
            sweep.watched.borrow_mut().retain(|watched| {
                let Some(watch) = watched.upgrade() else {
                    return false;
                };
                let idle_while_stopping = draining && watch.busy.get() == 0;
                if !watch.overdue(tick) && !idle_while_stopping {
                    return true;
                }
                tracing::debug!(
                    timeout_s = HEAD_TIMEOUT.as_secs(),
                    stopping = draining,
                    "connection closed: no complete request head within the timeout, or the server is stopping"
                );
                if let Some(abort) = watch.abort.get() {
                    abort.abort();
                }
                false
            });
            sweep.sweeper.go_on(!sweep.watched.borrow().is_empty())
        })
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_overdue_only_when_idle_for_longer_than_the_timeout() {
        let watch = HeadWatch::new();
        let start = watch.idle_since.get();
        let limit = HEAD_TIMEOUT.as_secs();
        assert!(!watch.overdue(start + limit));
        assert!(watch.overdue(start + limit + 1));
        let busy = watch.request_started();
        assert!(!watch.overdue(start + 10 * limit), "busy is never overdue");
        let second = watch.request_started();
        drop(busy);
        assert!(!watch.overdue(start + 10 * limit), "one request still busy");
        drop(second);
        assert!(
            watch.overdue(start + limit + 1),
            "idle again from the same tick"
        );
    }
}
