//! The way into a running instance: [`InstanceHandle`], what the pool holds
//! and calls.
//!
//! [`Instance::spawn`] hands a loaded instance to its driver task on the
//! current thread and returns a handle; everything the pool does with a
//! running instance goes through it: dispatching a request, counting what is
//! in flight, reading the queue wait and the heap, waiting for the stop.
//!
//! Invariants: the handle is `!Send` like the instance, and its channel to
//! the driver (`Command`s) has no atomics; the instance runs while a handle
//! exists or a request is in flight; a response future dropped before its
//! answer tells the driver the request was abandoned.

use std::cell::Cell;
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Instance;
use crate::graveyard::Graveyard;
use crate::instance_host::{InstanceHost, Responder};
use crate::local_channel;
use crate::request::{DispatchError, IncomingRequest, OutgoingResponse};

/// The way into a running instance. Cheap to clone; `!Send`, like the
/// instance: it is used on the instance's thread.
///
/// The instance runs while any handle exists or any request is in flight:
/// dropping every handle lets in-flight requests (streams and `waitUntil`
/// work included) finish, then the instance is dropped on its thread.
#[derive(Clone)]
pub struct InstanceHandle {
    tx: local_channel::Sender<Command>,
    next_id: Rc<Cell<u32>>,
    /// For the count of requests in flight (gone with the instance).
    table: Weak<InstanceHost>,
    queue_wait: Rc<QueueWait>,
    heap_used: Arc<AtomicUsize>,
    stopped: watch::Receiver<bool>,
}

impl InstanceHandle {
    /// Hands `request` to the instance. The returned future resolves when the
    /// handler's response is ready (its body may still be streaming).
    pub fn dispatch(
        &self,
        request: IncomingRequest,
    ) -> impl Future<Output = Result<OutgoingResponse, DispatchError>> + 'static {
        let id = self.next_id.get().max(1);
        self.next_id.set(id.wrapping_add(1));
        let (responder, response) = local_channel::oneshot();
        // A bool, not the send's result: a refused command (the request
        // inside it) would otherwise be carried in every request's future.
        let sent = self
            .tx
            .send(Command::Dispatch {
                id,
                request,
                responder,
            })
            .is_ok();
        let abort_on_drop = AbortOnDrop {
            tx: self.tx.clone(),
            id,
            armed: sent,
        };
        async move {
            let mut abort_on_drop = abort_on_drop;
            if !sent {
                return Err(DispatchError::InstanceGone);
            }
            let outcome = response.await.unwrap_or(Err(DispatchError::InstanceGone));
            abort_on_drop.armed = false;
            outcome
        }
    }

    /// Whether the instance's driver has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Requests not yet complete: waiting for a response, streaming one, or
    /// running `waitUntil` work.
    pub fn in_flight(&self) -> usize {
        self.table.upgrade().map_or(0, |table| table.in_flight())
    }

    /// A moving average of how long recent requests waited between being
    /// received and their handler running: the sign that the instance's
    /// thread cannot keep up.
    pub fn queue_wait(&self) -> Duration {
        Duration::from_micros(self.queue_wait.ewma_micros.get())
    }

    /// Bytes of V8 heap in use, as last sampled (at most every 100 ms while
    /// the instance is working).
    pub fn heap_used(&self) -> usize {
        self.heap_used.load(Ordering::Relaxed)
    }

    /// Resolves once the instance has stopped: dropped, or buried in its
    /// graveyard to be dropped later. Waiting does not keep it alive.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stopped.clone();
        async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }
    }
}

impl Instance {
    /// Starts the instance's driver task on the current `LocalSet` and
    /// returns the handle requests go through. The task ends when every
    /// handle is dropped and the last request has completed, or when the
    /// event loop fails; the instance is dropped on this thread either way.
    pub fn spawn(self) -> InstanceHandle {
        self.spawn_inner(None)
    }

    /// Like [`Instance::spawn`], but when the driver stops the instance is
    /// buried in `graveyard` rather than dropped then: its owner drops it
    /// when the thread is idle.
    pub fn spawn_with_graveyard(self, graveyard: Graveyard) -> InstanceHandle {
        self.spawn_inner(Some(graveyard))
    }

    fn spawn_inner(self, graveyard: Option<Graveyard>) -> InstanceHandle {
        let (tx, rx) = local_channel::unbounded();
        let (stopped_tx, stopped) = watch::channel(false);
        let handle = InstanceHandle {
            tx,
            next_id: Rc::new(Cell::new(1)),
            table: Rc::downgrade(&self.table),
            queue_wait: self.queue_wait.clone(),
            heap_used: self.heap_used.clone(),
            stopped,
        };
        tokio::task::spawn_local(async move {
            let mut instance = self;
            let killed = instance.drive(rx).await;
            match graveyard {
                // A killed isolate may hold its whole memory budget: it is
                // returned now rather than when the thread is next idle.
                Some(graveyard) if !killed => graveyard.bury(instance),
                _ => drop(instance),
            }
            let _ = stopped_tx.send(true);
        });
        handle
    }
}

pub(super) enum Command {
    Dispatch {
        id: u32,
        request: IncomingRequest,
        responder: Responder,
    },
    /// The client went away before the response was ready.
    Abort(u32),
}

/// An exponentially weighted moving average of queue waits (weight 1/8 per
/// sample), in microseconds.
#[derive(Debug, Default)]
pub(super) struct QueueWait {
    ewma_micros: Cell<u64>,
}

impl QueueWait {
    pub(super) fn record(&self, wait: Duration) {
        let sample = wait.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.ewma_micros.get();
        self.ewma_micros.set(old - old / 8 + sample / 8);
    }
}

/// Tells the instance a request was abandoned (its response future dropped
/// before completion: the client disconnected), so `request.signal` aborts.
struct AbortOnDrop {
    tx: local_channel::Sender<Command>,
    id: u32,
    armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.send(Command::Abort(self.id));
        }
    }
}
