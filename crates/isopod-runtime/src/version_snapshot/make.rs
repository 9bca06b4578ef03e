//! Making a version's snapshot: the bundle's top-level code run in a
//! snapshotting isolate layered on isopod's API snapshot, checked for what a
//! snapshot must not hold, and serialised.
//!
//! It runs twice per version (see `snapshotter.rs`): first in a process of
//! its own as a check ([`Process::Checking`]), then, if that process
//! succeeded, in the serving process on a thread of its own
//! ([`Process::Serving`]), whose bytes are kept.
//!
//! Invariants: runs on a thread that has entered no other isolate; the
//! bundle's top-level code runs under a CPU-time deadline (the app's
//! startup budget plus a margin) and its heap limit, past which it is
//! terminated (the deadline thread only signals); a refused snapshotting
//! isolate is never serialised (see `make`).

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How often the deadline thread reads the snapshotting thread's CPU clock.
const DEADLINE_CHECK: Duration = Duration::from_millis(10);

/// How many times the CPU deadline a run may take on the wall clock.
const WALL_CLOCK_FACTOR: u32 = 20;

use deno_core::{v8, JsRuntime, JsRuntimeForSnapshot, PollEventLoopOptions, RuntimeOptions};
use isopod_api::{IsolateOptions, WatchedBlobStore};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::NotSnapshottable;
use crate::bundle::Bundle;
use crate::instance_host::{as_host, InstanceHost};
use crate::loader::BundleLoader;
use crate::snapshot::{RESIDUAL_LAZY_ESM, RESIDUAL_LAZY_JS, SNAPSHOT};

/// What the snapshotting process is told: the bundle and what its
/// top-level code may see and spend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotRequest {
    pub(crate) app: String,
    /// The bundle's specifier (what stack traces show).
    pub(crate) specifier: String,
    pub(crate) source: String,
    /// Whether it is an ES module, when an instance already found out.
    pub(crate) is_module: Option<bool>,
    /// A service-worker script's globals (a module's `env` is not part of
    /// the snapshot: each instance passes it to the handler).
    pub(crate) globals: Vec<(String, String)>,
    pub(crate) heap_initial_bytes: usize,
    pub(crate) heap_max_bytes: usize,
    /// How long top-level code may run, wall clock.
    pub(crate) deadline_ms: u64,
    /// Whether top-level `Math.random()` may be shared by the instances.
    pub(crate) share_random: bool,
}

/// Which process a snapshot is made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Process {
    /// The checking process, which serves nothing and exits next.
    Checking,
    /// The serving process, whose isolates must share the snapshot's
    /// read-only space.
    Serving,
}

/// Runs the bundle of `request` in a snapshotting isolate, on the calling
/// thread (which must have no isolate entered), and returns the snapshot's
/// bytes.
pub(crate) fn make_on_this_thread(
    request: SnapshotRequest,
    process: Process,
) -> Result<Vec<u8>, NotSnapshottable> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NotSnapshottable::Failed(e.to_string()))?;
    if process == Process::Serving {
        let _entered = runtime.enter();
        settle_read_only_space()?;
    }
    runtime.block_on(make(request))
}

/// Makes sure the process's read-only space is the API snapshot's, sealed,
/// before a snapshotting isolate starts: the first isolate of a process
/// sets it up for all, and a snapshotting isolate that came first would set
/// it up writable and grow it with its own objects, which then no isolate
/// made from the API snapshot could share. V8 lets the read-only space go
/// with the last isolate using it, so one ordinary isolate is made and kept
/// (exited, never dropped) for the life of the process.
fn settle_read_only_space() -> Result<(), NotSnapshottable> {
    static SETTLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    SETTLED
        .get_or_init(|| {
            let mut keeper = JsRuntime::try_new(RuntimeOptions {
                startup_snapshot: Some(SNAPSHOT),
                residual_lazy_js_sources: RESIDUAL_LAZY_JS,
                residual_lazy_esm_sources: RESIDUAL_LAZY_ESM,
                extensions: isopod_api::extensions(),
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
            // SAFETY: rusty_v8 entered the new isolate on creation and
            // nothing has entered another since; it is never entered or
            // dropped again.
            unsafe { keeper.v8_isolate().exit() };
            std::mem::forget(keeper);
            Ok(())
        })
        .clone()
        .map_err(NotSnapshottable::Failed)
}

async fn make(request: SnapshotRequest) -> Result<Vec<u8>, NotSnapshottable> {
    let specifier = deno_core::ModuleSpecifier::parse(&request.specifier)
        .map_err(|e| NotSnapshottable::Failed(format!("a malformed specifier: {e}")))?;
    let bundle = Bundle::new(specifier, request.source.as_str());
    let (control_tx, _control_rx) = mpsc::unbounded_channel();
    let table = InstanceHost::new(request.app.as_str().into(), control_tx);
    let loader = Rc::new(BundleLoader::default());
    loader.set_bundle(&bundle);
    let blobs = Arc::new(WatchedBlobStore::default());
    let create_params =
        v8::CreateParams::default().heap_limits(request.heap_initial_bytes, request.heap_max_bytes);
    // On top of the API snapshot, not from scratch: V8 builds a snapshot's
    // read-only space when it makes one from scratch, promoting into it what
    // the heap holds then, and every isolate of a process shares one
    // read-only space; so only snapshots layered on the API snapshot can
    // live beside the isolates made from it. (Layered, the runtime reads
    // none of the extensions' sources again: those paths exist only where
    // isopod was built.)
    let mut runtime = JsRuntimeForSnapshot::try_new(RuntimeOptions {
        create_params: Some(create_params),
        startup_snapshot: Some(SNAPSHOT),
        residual_lazy_js_sources: RESIDUAL_LAZY_JS,
        residual_lazy_esm_sources: RESIDUAL_LAZY_ESM,
        extensions: isopod_api::extensions(),
        module_loader: Some(loader.clone()),
        ..Default::default()
    })
    .map_err(|e| NotSnapshottable::Failed(e.to_string()))?;

    // The deadline and the heap limit only signal: they terminate the
    // running script, and the run below reports it.
    let stopped = Arc::new(AtomicBool::new(false));
    let handle = runtime.v8_isolate().thread_safe_handle();
    let heap_handle = handle.clone();
    let heap_stopped = stopped.clone();
    runtime.add_near_heap_limit_callback(move |current, _initial| {
        heap_stopped.store(true, Ordering::SeqCst);
        heap_handle.terminate_execution();
        current * 2
    });
    // The deadline is this thread's CPU time, not the wall clock: the
    // snapshot is made at a low priority, and on a busy machine it may wait
    // long for a core without running any longer. The wall clock only
    // bounds a run that waits without working.
    let (finished, deadline) = std::sync::mpsc::channel::<()>();
    let deadline_stopped = stopped.clone();
    let limit = Duration::from_millis(request.deadline_ms);
    let clock = crate::cpu_clock::current_thread_clock();
    let cpu_at_start = crate::cpu_clock::read(clock);
    let watchdog = std::thread::Builder::new()
        .name("isopod-snapshot-deadline".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                deadline.recv_timeout(DEADLINE_CHECK)
            {
                let spent = crate::cpu_clock::read(clock).saturating_sub(cpu_at_start);
                if spent >= limit || started.elapsed() >= limit * WALL_CLOCK_FACTOR {
                    deadline_stopped.store(true, Ordering::SeqCst);
                    handle.terminate_execution();
                    return;
                }
            }
        })
        .map_err(|e| NotSnapshottable::Failed(e.to_string()))?;

    let outcome = run_top_level(&mut runtime, &bundle, &request, &table, &blobs).await;
    drop(finished);
    let _ = watchdog.join();
    runtime.v8_isolate().cancel_terminate_execution();
    let outcome = match outcome {
        Err(_) if stopped.load(Ordering::SeqCst) => Err(NotSnapshottable::Failed(format!(
            "its top-level code ran past {} ms of CPU time or its heap limit",
            request.deadline_ms
        ))),
        other => other,
    };
    match outcome {
        Ok(()) => {
            let made = runtime.snapshot();
            super::sidecar::mend(&made, SNAPSHOT, crate::snapshot::source_count())
                .map_err(NotSnapshottable::Failed)
        }
        Err(refused) => {
            // Serialising is the only way V8 releases a snapshotting
            // isolate, and it can crash on the very state that made this
            // refuse: the isolate is left alone. In the checking process
            // its exit reclaims it; in the serving process this happens only
            // when a bundle refused here was accepted by the checking
            // process (top-level code that behaves differently run to run),
            // and costs that isolate's memory.
            std::mem::forget(runtime);
            Err(refused)
        }
    }
}

/// Runs the bootstrap for a snapshot, the bundle's top-level code, and the
/// checks; `Ok` when the heap may be snapshotted.
async fn run_top_level(
    runtime: &mut JsRuntimeForSnapshot,
    bundle: &Bundle,
    request: &SnapshotRequest,
    table: &Rc<InstanceHost>,
    blobs: &Arc<WatchedBlobStore>,
) -> Result<(), NotSnapshottable> {
    let failed = |e: &dyn std::fmt::Display| NotSnapshottable::Failed(e.to_string());
    let options = IsolateOptions {
        user_agent: "isopod".to_string(),
        blob_store: Some(blobs.clone()),
    };
    runtime
        .lazy_init_extensions(isopod_api::extension_args(&options))
        .map_err(|e| failed(&e))?;
    isopod_api::install_host(&mut runtime.op_state().borrow_mut(), as_host(table));
    // Nothing leaves: top-level fetch is a taint, and the policy denies all.
    isopod_api::set_net_policy(
        &mut runtime.op_state().borrow_mut(),
        &isopod_api::NetPolicy::default(),
    )
    .map_err(|e| failed(&e))?;
    let end = runtime
        .execute_script(
            "isopod:bootstrap",
            if request.share_random {
                "globalThis.__isopodInitForSnapshot(true)"
            } else {
                "globalThis.__isopodInitForSnapshot(false)"
            },
        )
        .map_err(|e| failed(&e))?;
    {
        deno_core::scope!(scope, runtime);
        scope
            .get_current_context()
            .set_allow_generation_from_strings(false);
    }
    let resources_before = runtime.op_state().borrow().resource_table.names().count();

    let is_module = match request.is_module {
        Some(is_module) => is_module,
        None => crate::instance::bundle_is_module(runtime, bundle),
    };
    let mut reasons = Vec::new();
    // A failure is reported after the taints: a top-level throw is often
    // what a taint's placeholder caused, and the taint says why.
    let evaluated = if is_module {
        evaluate_module(runtime, bundle).await
    } else {
        crate::instance::set_globals(runtime, &request.globals);
        runtime
            .execute_script(bundle.specifier().to_string(), bundle.source().to_string())
            .map(|_| None)
            .map_err(|e| failed(&e))
    };
    let (exported, failure) = match evaluated {
        Ok(None) if is_module => {
            reasons.push("a top-level await that never settles".to_string());
            (None, None)
        }
        Ok(exported) => (exported, None),
        Err(failure) => (None, Some(failure)),
    };

    if failure.is_none() && !event_loop_is_idle(runtime)? {
        reasons.push("work still pending when it ended (a timer, a fetch or other I/O)".into());
    }
    if runtime.op_state().borrow().resource_table.names().count() > resources_before {
        reasons.push("a host resource (a stream or compression)".into());
    }
    if blobs.used() {
        reasons.push("a Blob or File".into());
    }
    let taints = {
        deno_core::scope!(scope, runtime);
        v8::tc_scope!(let scope, scope);
        let end = v8::Local::new(scope, end);
        let end = v8::Local::<v8::Function>::try_from(end)
            .map_err(|_| NotSnapshottable::Failed("the bootstrap returned no end".into()))?;
        let exported: v8::Local<v8::Value> = match exported {
            Some(namespace) => {
                let namespace = v8::Local::new(scope, namespace);
                let key = v8::String::new(scope, "default")
                    .ok_or_else(|| NotSnapshottable::Failed("out of memory".into()))?;
                namespace
                    .get(scope, key.into())
                    .unwrap_or_else(|| v8::undefined(scope).into())
            }
            None => v8::undefined(scope).into(),
        };
        let undefined = v8::undefined(scope).into();
        match end
            .call(scope, undefined, &[exported])
            .and_then(|t| v8::Local::<v8::Array>::try_from(t).ok())
        {
            Some(taints) => (0..taints.length())
                .filter_map(|i| taints.get_index(scope, i))
                .map(|t| t.to_rust_string_lossy(scope))
                .collect::<Vec<_>>(),
            // A terminated run cannot call it; the failure says why.
            None if failure.is_some() => Vec::new(),
            None => {
                return Err(NotSnapshottable::Failed(
                    "the bootstrap's end failed".into(),
                ))
            }
        }
    };
    if let (Some(failure), true) = (failure, taints.is_empty()) {
        return Err(failure);
    }
    reasons.splice(0..0, taints);
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(NotSnapshottable::Tainted(reasons))
    }
}

/// deno_core's error for a top-level `await` left with nothing to settle it.
const TOP_LEVEL_AWAIT_STUCK: &str = "Top-level await promise never resolved";

/// Loads and evaluates the bundle as the main module, running the event
/// loop for its top-level `await`s; the module's namespace, or `None` when
/// a top-level `await` is left waiting with nothing to settle it.
async fn evaluate_module(
    runtime: &mut JsRuntime,
    bundle: &Bundle,
) -> Result<Option<v8::Global<v8::Object>>, NotSnapshottable> {
    let failed = |e: &dyn std::fmt::Display| NotSnapshottable::Failed(e.to_string());
    let id = runtime
        .load_main_es_module(bundle.specifier())
        .await
        .map_err(|e| failed(&e))?;
    let evaluated = runtime.mod_evaluate(id);
    let mut evaluated = pin!(evaluated);
    let settled = poll_fn(|cx| {
        if let Poll::Ready(result) = evaluated.as_mut().poll(cx) {
            return Poll::Ready(result.map(|()| true));
        }
        match runtime.poll_event_loop(cx, PollEventLoopOptions::default()) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Nothing left that could settle it.
            Poll::Ready(Ok(())) => match evaluated.as_mut().poll(cx) {
                Poll::Ready(result) => Poll::Ready(result.map(|()| true)),
                Poll::Pending => Poll::Ready(Ok(false)),
            },
            Poll::Pending => Poll::Pending,
        }
    })
    .await
    .or_else(|e| {
        if e.to_string().contains(TOP_LEVEL_AWAIT_STUCK) {
            Ok(false)
        } else {
            Err(failed(&e))
        }
    })?;
    if !settled {
        return Ok(None);
    }
    runtime
        .get_module_namespace(id)
        .map(Some)
        .map_err(|e| failed(&e))
}

/// Whether the event loop has nothing left to do, after a few turns (a
/// turn may settle what top-level code left for the next tick).
fn event_loop_is_idle(runtime: &mut JsRuntime) -> Result<bool, NotSnapshottable> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for _ in 0..3 {
        match runtime.poll_event_loop(&mut cx, PollEventLoopOptions::default()) {
            Poll::Ready(Ok(())) => return Ok(true),
            // Nothing pending but a top-level await, recorded already.
            Poll::Ready(Err(e)) if e.to_string().contains(TOP_LEVEL_AWAIT_STUCK) => {
                return Ok(true)
            }
            Poll::Ready(Err(e)) => return Err(NotSnapshottable::Failed(e.to_string())),
            Poll::Pending => {}
        }
    }
    Ok(false)
}
