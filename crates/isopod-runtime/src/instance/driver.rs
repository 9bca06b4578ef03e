//! The driver: the task that runs a spawned instance.
//!
//! `drive` polls the handles' commands and the event loop in turn. Every
//! dispatch already queued is handed to the JavaScript dispatcher in one
//! window (`dispatch_batch`, `call_dispatcher`), each request a segment of
//! its own for the CPU accounting and the watchdog; then come aborts,
//! lingering `waitUntil` work, one turn of the event loop (with the heap
//! sampled against the memory budget) and the release of finished requests'
//! bodies. When the instance falls idle after its first request, it makes
//! its version's code cache from what ran (`code_cache.rs`); after a longer
//! idle spell it gives memory back.
//!
//! Invariants: no V8 scope lives across a poll; a limit's termination is
//! looked for after every dispatch and every event-loop turn, and stops the
//! driver as a kill; when the driver stops, every request still in flight is
//! answered `InstanceGone`.

use std::cell::RefCell;
use std::future::{poll_fn, Future as _};
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use deno_core::{v8, OpState, PollEventLoopOptions};

use super::handle::Command;
use super::{Dispatcher, Instance};
use crate::body::RequestBodyResource;
use crate::enforcer::{MemoryCheck, MemorySample};
use crate::instance_host::{Control, InstanceHost, Responder};
use crate::local_channel;
use crate::request::{DispatchError, IncomingRequest};
use crate::watchdog::Termination;
use crate::window::{Window, WindowKind};

/// How long an instance stays idle (no dispatch, nothing in flight) before
/// it is asked to give memory back.
const IDLE_SHRINK: Duration = Duration::from_secs(2);

/// Opens a handle scope in `$dispatcher`'s context on `$runtime`'s isolate.
macro_rules! dispatcher_scope {
    ($scope:ident, $runtime:expr, $dispatcher:expr) => {
        let isolate = &mut *$runtime.v8_isolate();
        v8::scope!($scope, isolate);
        let context = v8::Local::new($scope, &$dispatcher.context);
        let $scope = &mut v8::ContextScope::new($scope, context);
    };
}

impl Instance {
    /// Serves requests until every handle is gone and nothing is in flight,
    /// the event loop fails, or a limit kills the isolate (then returns
    /// true).
    pub(super) async fn drive(&mut self, mut commands: local_channel::Receiver<Command>) -> bool {
        const LINGER_CHECK: Duration = Duration::from_millis(500);
        let mut handles_gone = false;
        let mut linger_check = tokio::time::interval(LINGER_CHECK);
        linger_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Idle instances give memory back: armed when the instance falls
        // idle, it fires once after IDLE_SHRINK without a dispatch.
        let mut idle_shrink: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut dispatches_seen = u64::MAX;
        let outcome = poll_fn(|cx| {
            // Everything already queued is dispatched before the event loop
            // runs, so one poll serves a whole batch.
            let mut after_batch = None;
            while !handles_gone {
                match after_batch.take().unwrap_or_else(|| commands.poll_recv(cx)) {
                    Poll::Ready(Some(Command::Dispatch {
                        id,
                        request,
                        responder,
                    })) => {
                        after_batch =
                            self.dispatch_batch(id, request, responder, &mut commands, cx);
                    }
                    Poll::Ready(Some(Command::Abort(id))) => self.abort(id),
                    Poll::Ready(None) => handles_gone = true,
                    Poll::Pending => break,
                }
                if let Some(termination) = self.termination() {
                    return Poll::Ready(Stop::Killed(termination));
                }
            }
            while let Poll::Ready(Some(control)) = self.control_rx.poll_recv(cx) {
                match control {
                    Control::Abort(id) => self.abort(id),
                }
            }
            // Only an instance with requests in flight has anything to
            // expire: an idle one is not woken for it. The interval is
            // polled until it is pending, so its next tick wakes the driver.
            while self.table.in_flight() > 0 && linger_check.poll_tick(cx).is_ready() {
                self.enforcer.expire_lingering();
            }
            let polled = self.poll_event_loop(cx);
            self.release_bodies();
            if let Some(termination) = self.termination() {
                return Poll::Ready(Stop::Killed(termination));
            }
            if self.table.in_flight() == 0 && self.dispatches != dispatches_seen {
                // Idle after new work (or just spawned): once a request has
                // run, the version's code cache is made from what ran; the
                // shrink is (re)armed.
                if self.dispatches > 0 {
                    self.make_code_cache_after_execution();
                }
                dispatches_seen = self.dispatches;
                idle_shrink = Some(Box::pin(tokio::time::sleep(IDLE_SHRINK)));
            }
            if let Some(sleep) = idle_shrink.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    idle_shrink = None;
                    if self.table.in_flight() == 0 && self.dispatches == dispatches_seen {
                        self.shrink();
                    }
                }
            }
            match polled {
                Poll::Ready(Err(error)) => Poll::Ready(Stop::Failed(error)),
                Poll::Ready(Ok(())) if handles_gone && self.table.in_flight() == 0 => {
                    Poll::Ready(Stop::Done)
                }
                _ => Poll::Pending,
            }
        })
        .await;
        let killed = match outcome {
            Stop::Done => false,
            Stop::Failed(error) => {
                tracing::error!(app = %self.table.app(), error = %error, "instance event loop failed; instance discarded");
                false
            }
            Stop::Killed(termination) => {
                self.kill(termination);
                true
            }
        };
        self.table.fail_all(|_| DispatchError::InstanceGone);
        killed
    }

    /// Dispatches a request and every dispatch queued behind it in one
    /// window: the isolate and its context are entered once for the batch,
    /// and each request is a segment of its own for the CPU accounting and
    /// the watchdog ([`Window::switch`]). Under load this is most of a
    /// window's cost saved per request; alone, a request pays what it did.
    ///
    /// Returns the queue's poll that ended the batch (anything but a
    /// dispatch) for the driver to handle, or `None` if the batch ended
    /// otherwise: a limit stopped the isolate (the requests still queued
    /// stay queued, for the driver's kill), or there is no dispatcher.
    fn dispatch_batch(
        &mut self,
        id: u32,
        request: IncomingRequest,
        responder: Responder,
        commands: &mut local_channel::Receiver<Command>,
        cx: &mut Context<'_>,
    ) -> Option<Poll<Option<Command>>> {
        let Some(dispatcher) = self.dispatcher.clone() else {
            let _ = responder.send(Err(DispatchError::InstanceGone));
            return None;
        };
        let op_state = self.runtime.op_state();
        // SAFETY: `self.isolate` is the live isolate of `self.runtime`, owned
        // by this thread; the window ends before this function returns.
        let mut window =
            unsafe { Window::enter(self.isolate, &*self.enforcer, WindowKind::Dispatch(id)) };
        dispatcher_scope!(scope, self.runtime, dispatcher);
        self.dispatches += 1;
        let mut next = (id, request, responder);
        loop {
            let (id, request, responder) = next;
            let received = request.received;
            let terminated = {
                v8::scope!(let scope, scope);
                call_dispatcher(
                    scope,
                    &dispatcher,
                    &self.table,
                    &op_state,
                    id,
                    request,
                    responder,
                )
            };
            // Up to the segment's entry: no read of its own.
            let dispatched = crate::window::entered_at();
            self.queue_wait.record(
                dispatched.map_or(Duration::ZERO, |at| at.saturating_duration_since(received)),
            );
            if terminated {
                return None;
            }
            match commands.poll_recv(cx) {
                Poll::Ready(Some(Command::Dispatch {
                    id,
                    request,
                    responder,
                })) => {
                    window.switch(WindowKind::Dispatch(id));
                    next = (id, request, responder);
                }
                other => return Some(other),
            }
        }
    }

    /// Closes the body resources of requests that completed; a body the
    /// handler never read would otherwise live until its stream is collected.
    fn release_bodies(&mut self) {
        let released = self.table.take_released_bodies();
        if released.is_empty() {
            return;
        }
        let state = self.runtime.op_state();
        let mut state = state.borrow_mut();
        for rid in released {
            // Already closed when the handler read the body to its end.
            let _ = state
                .resource_table
                .take_any(rid)
                .map(|resource| resource.close());
        }
    }

    fn abort(&mut self, id: u32) {
        self.table.abandoned(id);
        let Some(dispatcher) = &self.dispatcher else {
            return;
        };
        let dispatcher = dispatcher.clone();
        self.window(WindowKind::Other, |runtime| {
            dispatcher_scope!(scope, runtime, dispatcher);
            v8::tc_scope!(let scope, scope);
            let abort = v8::Local::new(scope, &dispatcher.abort);
            let id = v8::Integer::new_from_unsigned(scope, id).into();
            let undefined = v8::undefined(scope).into();
            let _ = abort.call(scope, undefined, &[id]);
        });
    }

    /// Asks V8 to give back what an idle instance does not need: a full
    /// collection that also shrinks the heap's spaces. Runs once per idle
    /// period, on the instance's own thread.
    fn shrink(&mut self) {
        let used = self.window(WindowKind::Other, |runtime| {
            let isolate = runtime.v8_isolate();
            isolate.low_memory_notification();
            isolate.get_heap_statistics().used_heap_size()
        });
        self.heap_used.store(used, Ordering::Relaxed);
    }

    pub(super) fn poll_event_loop(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), deno_core::error::CoreError>> {
        const HEAP_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
        let sample = self
            .heap_sampled
            .is_none_or(|at| at.elapsed() >= HEAP_SAMPLE_INTERVAL);
        if sample {
            self.heap_sampled = Some(std::time::Instant::now());
        }
        let heap_used = self.heap_used.clone();
        let (polled, sampled) = self.window(WindowKind::EventLoop, |runtime| {
            let polled = runtime.poll_event_loop(cx, PollEventLoopOptions::default());
            let sampled = sample.then(|| {
                let stats = runtime.v8_isolate().get_heap_statistics();
                (stats.used_heap_size(), stats.external_memory())
            });
            (polled, sampled)
        });
        if let Some((used, external)) = sampled {
            heap_used.store(used, Ordering::Relaxed);
            self.heap_high_water = self.heap_high_water.max(used);
            let memory = self.memory.clone();
            let sample = move |heap_used, external| MemorySample {
                heap_used,
                external,
                array_buffers: memory.array_buffer_bytes(),
            };
            if self.enforcer.check_memory(sample(used, external), false)
                == MemoryCheck::CollectAndReport
            {
                // Garbage counts until it is collected (rare: only an
                // isolate at its budget pays).
                let (used, external) = self.window(WindowKind::Other, |runtime| {
                    let isolate = runtime.v8_isolate();
                    isolate.low_memory_notification();
                    let stats = isolate.get_heap_statistics();
                    (stats.used_heap_size(), stats.external_memory())
                });
                heap_used.store(used, Ordering::Relaxed);
                self.enforcer.check_memory(sample(used, external), true);
            }
        }
        polled
    }
}

/// Hands one request to the JavaScript dispatcher, in `scope` (a handle
/// scope of the request's own, inside a dispatch window). Returns whether a
/// limit terminated the isolate meanwhile: every termination (the
/// watchdog's interrupt, the heap limit's callback) stops the call, since
/// both happen on this thread while V8 runs.
fn call_dispatcher(
    scope: &mut v8::PinScope<'_, '_>,
    dispatcher: &Dispatcher,
    table: &InstanceHost,
    op_state: &RefCell<OpState>,
    id: u32,
    request: IncomingRequest,
    responder: Responder,
) -> bool {
    let body_rid = request.body.map(|body| {
        op_state
            .borrow_mut()
            .resource_table
            .add(RequestBodyResource::new(body))
    });
    v8::tc_scope!(let scope, scope);
    let dispatch = v8::Local::new(scope, &dispatcher.dispatch);
    let id_value = v8::Integer::new_from_unsigned(scope, id).into();
    let method: v8::Local<v8::Value> = match standard_method_index(&request.method) {
        Some(index) => v8::Integer::new(scope, index).into(),
        None => v8::String::new(scope, request.method.as_str())
            .map(Into::into)
            .unwrap_or_else(|| v8::String::empty(scope).into()),
    };
    // Always ASCII (built from a parsed URI and a checked `Host`): made as
    // one-byte, without UTF-8 decoding.
    let url = if request.url.is_ascii() {
        v8::String::new_from_one_byte(scope, request.url.as_bytes(), v8::NewStringType::Normal)
    } else {
        v8::String::new(scope, &request.url)
    };
    let url = url
        .map(Into::into)
        .unwrap_or_else(|| v8::String::empty(scope).into());
    // One string for all the lines; the bootstrap splits it only if the
    // handler reads the headers.
    let headers =
        v8::String::new_from_one_byte(scope, request.headers.as_bytes(), v8::NewStringType::Normal)
            .map(Into::into)
            .unwrap_or_else(|| v8::String::empty(scope).into());
    crate::recycle::recycle_buffer(request.headers.into_buffer());
    let rid = v8::Integer::new(scope, body_rid.map_or(-1, |rid| rid as i32)).into();
    let protocol = v8::Integer::new(scope, protocol_index(request.version)).into();
    let undefined = v8::undefined(scope).into();
    // In the table before any JavaScript runs: the ops look it up.
    table.insert(
        id,
        request.method,
        request.url,
        request.request_id,
        responder,
        body_rid,
    );
    if dispatch
        .call(
            scope,
            undefined,
            &[id_value, method, url, headers, rid, protocol],
        )
        .is_none()
    {
        if scope.is_execution_terminating() {
            // A limit stopped it; the driver answers as a kill.
            return true;
        }
        let detail = scope
            .exception()
            .map(|e| e.to_rust_string_lossy(scope))
            .unwrap_or_else(|| "the dispatcher failed".into());
        isopod_api::Host::fail(table, id, isopod_api::FailureKind::Threw, detail);
        isopod_api::Host::done(table, id);
    }
    false
}

/// Why a driver stopped.
enum Stop {
    /// Every handle is gone and nothing is in flight.
    Done,
    /// The event loop failed.
    Failed(deno_core::error::CoreError),
    /// A limit terminated the isolate.
    Killed(Termination),
}

/// The methods the bootstrap knows by index (its `STANDARD_METHODS`, in
/// this order): the dispatcher passes a small integer for them rather than
/// making a string per request.
/// The HTTP version as the bootstrap's `PROTOCOLS` lists it (for
/// `request.cf.httpProtocol`).
fn protocol_index(version: http::Version) -> i32 {
    match version {
        http::Version::HTTP_09 => 0,
        http::Version::HTTP_10 => 1,
        http::Version::HTTP_2 => 3,
        http::Version::HTTP_3 => 4,
        _ => 2,
    }
}

fn standard_method_index(method: &http::Method) -> Option<i32> {
    const STANDARD_METHODS: [http::Method; 7] = [
        http::Method::GET,
        http::Method::HEAD,
        http::Method::POST,
        http::Method::PUT,
        http::Method::DELETE,
        http::Method::OPTIONS,
        http::Method::PATCH,
    ];
    STANDARD_METHODS
        .iter()
        .position(|known| known == method)
        .map(|index| index as i32)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{body_text, on_local_thread, request};
    use super::super::{AppConfig, Instance};
    use crate::bundle::Bundle;
    use crate::request::DispatchError;

    /// Requests queued together are dispatched in one window, yet each is
    /// charged only its own CPU: five that each spin for about 60% of the
    /// limit all answer. When one then breaks the limit in the middle of a
    /// batch, it alone is the kill's cause; the one before it had its
    /// answer, and the one behind it is never started on the dead isolate.
    #[test]
    fn a_batch_of_dispatches_charges_each_request_its_own_cpu() {
        on_local_thread(|| async {
            let mut app = AppConfig::new("batch");
            app.limits.cpu_ms = 100;
            // JavaScript's clocks stand still inside a window, so the spin
            // is counted in iterations, sized from a timed run below.
            let bundle = Bundle::from_source(
                "batch.js",
                "export default { fetch(r) {\n  const url = new URL(r.url);\n  \
                 if (url.pathname === '/forever') { for (;;) {} }\n  \
                 let x = 0;\n  const n = Number(url.searchParams.get('n'));\n  \
                 for (let i = 0; i < n; i++) { x = (x + i) % 7919; }\n  \
                 return new Response(url.pathname + (x < 0 ? '!' : ''));\n} };",
            );
            let mut instance = Instance::blank(&app).unwrap();
            instance.load(&bundle, &app).await.unwrap();
            let handle = instance.spawn();
            // Timed by the wall clock, which is never shorter than the CPU
            // time: the size errs on the short side, and five of them still
            // add up to far more than the limit.
            let probe = 2_000_000u64;
            let mut took = Duration::MAX;
            for _ in 0..3 {
                let started = std::time::Instant::now();
                let response = handle
                    .dispatch(request(&format!("http://x/probe?n={probe}")))
                    .await
                    .unwrap();
                assert_eq!(body_text(response).await, "/probe");
                took = took.min(started.elapsed());
            }
            let n = (probe as f64 * 60.0 / (took.as_secs_f64() * 1000.0).max(0.001)) as u64;
            let paths = ["/a", "/b", "/c", "/d", "/e"];
            // Queued before the driver runs: one batch.
            let spins: Vec<_> = paths
                .iter()
                .map(|path| handle.dispatch(request(&format!("http://x{path}?n={n}"))))
                .collect();
            for (spin, path) in spins.into_iter().zip(paths) {
                let response = spin
                    .await
                    .map_err(|e| e.to_string())
                    .expect("a request within its own limit");
                assert_eq!(body_text(response).await, path);
            }

            let first = handle.dispatch(request("http://x/first?n=1"));
            let forever = handle.dispatch(request("http://x/forever"));
            let behind = handle.dispatch(request("http://x/behind?n=1"));
            let (first, forever, behind) = tokio::join!(first, forever, behind);
            let first = first
                .map_err(|e| e.to_string())
                .expect("answered before the kill");
            assert_eq!(body_text(first).await, "/first");
            assert!(
                matches!(
                    forever,
                    Err(DispatchError::Killed {
                        reason: crate::limits::KillReason::Cpu,
                        this_request: true
                    })
                ),
                "{:?}",
                forever.err()
            );
            assert!(
                matches!(behind, Err(DispatchError::InstanceGone)),
                "{:?}",
                behind.err()
            );
        });
    }
}
