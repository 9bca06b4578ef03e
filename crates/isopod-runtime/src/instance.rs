//! An instance: one isolate, one context, one loaded bundle.
//!
//! Lifecycle: [`Instance::blank`] creates the isolate from the startup
//! snapshot (the expensive part, milliseconds); [`Instance::load`] evaluates a
//! bundle in it (cheap for a small bundle); [`Instance::spawn`] hands it to a
//! driver task on the current thread's `LocalSet` and returns a
//! [`InstanceHandle`] through which requests are dispatched.
//!
//! Invariants (those of the fn0-ski seed):
//! - The isolate is exited right after creation, and every piece of V8 work
//!   runs inside a [`Window`] (enter … exit, hooks at both ends).
//! - No V8 handle or scope is held across an `.await`: futures that drive V8
//!   (module evaluation, the event loop) are polled one window per poll.
//! - Dropping is order-free: `Drop` enters the isolate, releases the globals,
//!   then drops the runtime, whose `OwnedIsolate` asserts it is current.
//! - `Instance` is `!Send` (it owns a `JsRuntime`): it lives and dies on the
//!   thread that created it.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::mem::ManuallyDrop;
use std::pin::pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use deno_core::{v8, JsRuntime, OpState, PollEventLoopOptions, RuntimeOptions};
use isopod_api::{IsolateOptions, NetPolicy};
use tokio::sync::{mpsc, watch};

use crate::body::RequestBodyResource;
use crate::bundle::Bundle;
use crate::enforcer::LimitEnforcer;
use crate::graveyard::Graveyard;
use crate::host::{as_host, Control, RequestTable, Responder};
use crate::limits::{KillEvent, KillReason, Limits};
use crate::loader::BundleLoader;
use crate::local_channel;
use crate::memory::MemoryBudget;
use crate::request::{DispatchError, IncomingRequest, OutgoingResponse};
use crate::snapshot::{RESIDUAL_LAZY_ESM, RESIDUAL_LAZY_JS, SNAPSHOT};
use crate::watchdog::{Termination, WatchSlot};
use crate::window::{Window, WindowKind};

/// Told of every kill of an instance, on the instance's thread, after the
/// event has been logged (the pool counts kills per app with it).
pub type KillSink = Rc<dyn Fn(&KillEvent)>;

/// What an instance needs to know about the app it serves.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The app's name, in every log record.
    pub name: Arc<str>,
    /// The app's variables, the handler's `env`.
    pub vars: Vec<(String, String)>,
    /// Which hosts outbound `fetch` may reach.
    pub net: NetPolicy,
    /// CPU, memory, time and size budgets.
    pub limits: Limits,
}

impl AppConfig {
    /// An app with no variables, whose `fetch` reaches public addresses
    /// only, with the default limits.
    pub fn new(name: impl Into<Arc<str>>) -> AppConfig {
        AppConfig {
            name: name.into(),
            vars: Vec::new(),
            net: NetPolicy::default(),
            limits: Limits::default(),
        }
    }
}

/// Why an instance could not be created or could not load its bundle.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// deno_core refused to create the runtime.
    #[error("creating the isolate failed: {0}")]
    Create(String),
    /// The bundle failed to compile or its top-level code threw. The message
    /// carries the error and its `file:line:column`.
    #[error("{0}")]
    Bundle(String),
    /// The network policy is malformed.
    #[error(transparent)]
    Permissions(#[from] isopod_api::PermissionError),
}

/// One isolate running (or ready to run) one bundle.
pub struct Instance {
    // Field order does not matter: `Drop` releases the V8 state explicitly.
    /// The isolate owned by `runtime`, as a stable raw pointer (the
    /// `OwnedIsolate` inside the runtime moves with it; the isolate does not).
    isolate: v8::UnsafeRawIsolatePtr,
    /// The window hooks: CPU accounting and deadlines.
    enforcer: Rc<LimitEnforcer>,
    /// The app's limits, as loaded.
    limits: Limits,
    memory: Arc<MemoryBudget>,
    heap_high_water: usize,
    /// The version label kill events carry.
    version: Arc<str>,
    kill_sink: Option<KillSink>,
    table: Rc<RequestTable>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    loader: Rc<BundleLoader>,
    /// How long dispatches wait in this instance's queue (shared with its
    /// handles).
    queue_wait: Rc<QueueWait>,
    /// The V8 heap in use, sampled by the driver (shared with its handles).
    heap_used: Arc<AtomicUsize>,
    heap_sampled: Option<std::time::Instant>,
    /// The bootstrap's `init(exported, env)`, until a bundle is loaded.
    init: Option<v8::Global<v8::Function>>,
    /// Shared with each window that calls into it for the window's length
    /// (an `Rc` clone: cloning a `v8::Global` makes a new global handle).
    dispatcher: Option<Rc<Dispatcher>>,
    runtime: ManuallyDrop<JsRuntime>,
}

struct Dispatcher {
    dispatch: v8::Global<v8::Function>,
    abort: v8::Global<v8::Function>,
    /// The main context, held here so that entering it per request makes a
    /// local handle only (deno_core's `scope!` clones the runtime's global
    /// handle to it, a global handle made and destroyed per call).
    context: v8::Global<v8::Context>,
}

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
    /// Creates an isolate from the startup snapshot, with the API surface
    /// ready and no bundle. Costs milliseconds; see the pool's spares.
    /// [`Instance::load`] sets the app's name (again) and its network policy,
    /// so a blank instance can serve any app.
    ///
    /// The heap limits of `app.limits` are fixed here, for the isolate's
    /// life; the CPU budgets are taken again at load.
    pub fn blank(app: &AppConfig) -> Result<Instance, InstanceError> {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let table = RequestTable::new(app.name.clone(), control_tx);
        let loader = Rc::new(BundleLoader::default());
        let heap_used = Arc::new(AtomicUsize::new(0));
        let memory = MemoryBudget::for_heap_max(app.limits.heap_max_bytes(), heap_used.clone());
        let create_params = v8::CreateParams::default()
            .heap_limits(app.limits.heap_initial_bytes(), app.limits.heap_max_bytes())
            .array_buffer_allocator(memory.allocator().make_shared());

        let mut runtime = JsRuntime::try_new(RuntimeOptions {
            create_params: Some(create_params),
            startup_snapshot: Some(SNAPSHOT),
            residual_lazy_js_sources: RESIDUAL_LAZY_JS,
            residual_lazy_esm_sources: RESIDUAL_LAZY_ESM,
            extensions: isopod_api::extensions(),
            module_loader: Some(loader.clone()),
            // Where a transferred ArrayBuffer's memory waits between
            // `postMessage`/`structuredClone` and the receiving side. One
            // per isolate: nothing crosses to another tenant.
            shared_array_buffer_store: Some(Default::default()),
            ..Default::default()
        })
        .map_err(|e| InstanceError::Create(e.to_string()))?;
        let slot = WatchSlot::register(runtime.v8_isolate().thread_safe_handle());
        crate::watchdog::remember_context(&slot, runtime.main_context());
        let heap_slot = slot.clone();
        // SAFETY: used only inside the callback, which V8 calls on this
        // isolate's thread while the isolate is alive.
        let heap_isolate = unsafe { runtime.v8_isolate().as_raw_isolate_ptr() };
        runtime.add_near_heap_limit_callback(move |current, _initial| {
            // SAFETY: see above; a non-owning view to read statistics.
            let mut isolate = unsafe { v8::Isolate::from_raw_isolate_ptr(heap_isolate) };
            let used = isolate.get_heap_statistics().used_heap_size();
            if used < current / 2 {
                // V8 also calls this when ArrayBuffer memory presses on the
                // limit (its last-resort GC before refusing a buffer); the
                // allocator bounds that, and the refusal becomes a
                // RangeError. A little room, and no kill.
                return current.saturating_add(current / 4);
            }
            // The heap itself is at its limit. V8 would abort the process:
            // terminate the script instead and give V8 the room to get
            // there.
            heap_slot.terminate_here(KillReason::Memory);
            current.saturating_mul(2)
        });
        let enforcer = Rc::new(LimitEnforcer::new(slot, table.clone(), &app.limits));
        // SAFETY: the pointer is only used while `runtime` (and so the
        // isolate) is alive: `Drop` releases the runtime last.
        let isolate = unsafe { runtime.v8_isolate().as_raw_isolate_ptr() };
        // SAFETY: rusty_v8 entered the new isolate on creation; nothing else
        // has entered an isolate since, so it is the current one. From here on
        // it is entered only inside windows.
        unsafe { runtime.v8_isolate().exit() };

        let mut instance = Instance {
            isolate,
            enforcer,
            limits: app.limits.clone(),
            memory,
            heap_high_water: 0,
            version: Arc::from(""),
            kill_sink: None,
            table,
            control_rx,
            loader,
            queue_wait: Rc::default(),
            heap_used,
            heap_sampled: None,
            init: None,
            dispatcher: None,
            runtime: ManuallyDrop::new(runtime),
        };
        instance.bootstrap()?;
        Ok(instance)
    }

    /// Per-isolate state and the bootstrap's hand-over, before any tenant
    /// code: after this, no tenant-reachable name leads to an op.
    fn bootstrap(&mut self) -> Result<(), InstanceError> {
        let host = as_host(&self.table);
        let options = IsolateOptions {
            user_agent: "isopod".to_string(),
        };
        let init = self.window(WindowKind::Startup, |runtime| {
            runtime
                .lazy_init_extensions(isopod_api::extension_args(&options))
                .map_err(|e| InstanceError::Create(e.to_string()))?;
            isopod_api::install_host(&mut runtime.op_state().borrow_mut(), host);
            let init = runtime
                .execute_script("isopod:bootstrap", "globalThis.__isopodInit()")
                .map_err(|e| InstanceError::Create(e.to_string()))?;
            deno_core::scope!(scope, runtime);
            // Code generation from strings (eval, new Function, …) is refused
            // from here on; V8 itself enforces it.
            scope
                .get_current_context()
                .set_allow_generation_from_strings(false);
            let init = v8::Local::new(scope, init);
            let init = v8::Local::<v8::Function>::try_from(init)
                .map_err(|_| InstanceError::Create("bootstrap returned no init".into()))?;
            Ok::<_, InstanceError>(v8::Global::new(scope, init))
        })?;
        self.init = Some(init);
        Ok(())
    }

    /// Evaluates `bundle` in this blank instance and wires its handler. A
    /// bundle that fails to compile, throws at top level or has no handler
    /// is refused with a message naming `file:line:column`.
    ///
    /// Top-level code runs under the app's startup CPU budget; past it, or
    /// past the memory limit, the load fails and the instance is unusable.
    pub async fn load(&mut self, bundle: &Bundle, app: &AppConfig) -> Result<(), InstanceError> {
        self.enforcer.set_limits(&app.limits);
        self.table
            .set_stream_idle_timeout(app.limits.stream_idle_timeout());
        self.limits = app.limits.clone();
        let loaded = self.load_bundle(bundle, app).await;
        match self.termination() {
            None => loaded,
            Some(termination) => {
                let event = self.kill(termination);
                Err(InstanceError::Bundle(match event.reason {
                    KillReason::Memory => format!(
                        "the bundle's top-level code exceeded the memory limit of {} MiB ({})",
                        self.limits.heap_max_mb,
                        bundle.specifier()
                    ),
                    _ => format!(
                        "the bundle's top-level code exceeded its startup CPU budget of {} ms ({})",
                        self.limits.startup_cpu_ms,
                        bundle.specifier()
                    ),
                }))
            }
        }
    }

    async fn load_bundle(&mut self, bundle: &Bundle, app: &AppConfig) -> Result<(), InstanceError> {
        let init = self
            .init
            .take()
            .ok_or_else(|| InstanceError::Bundle("this instance already has a bundle".into()))?;
        // A blank instance may have been made before its app was known.
        self.table.set_app(app.name.clone());
        isopod_api::set_net_policy(&mut self.runtime.op_state().borrow_mut(), &app.net)?;
        self.loader.set_bundle(bundle);
        // Decided once per version (the bundle remembers), not per instance:
        // finding out may parse the whole bundle.
        let is_module = *bundle.is_module().get_or_init(|| self.is_module(bundle));
        let exported = match is_module {
            false => {
                self.define_global_bindings(&app.vars);
                self.run_classic_script(bundle)?;
                None
            }
            true => {
                // Loaded through the loader, which hands over the source with
                // the version's code cache.
                let specifier = bundle.specifier().clone();
                let id = self
                    .windowed(WindowKind::Startup, |runtime| {
                        Box::pin(runtime.load_main_es_module(&specifier))
                    })
                    .await
                    .map_err(|e| InstanceError::Bundle(e.to_string()))?;
                self.windowed(WindowKind::Startup, |runtime| {
                    let evaluated = runtime.mod_evaluate(id);
                    Box::pin(async move {
                        let mut evaluated = pin!(evaluated);
                        poll_fn(|cx| {
                            if let Poll::Ready(result) = evaluated.as_mut().poll(cx) {
                                return Poll::Ready(result);
                            }
                            match runtime.poll_event_loop(cx, PollEventLoopOptions::default()) {
                                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                                _ => Poll::Pending,
                            }
                        })
                        .await
                    })
                })
                .await
                .map_err(|e| InstanceError::Bundle(e.to_string()))?;
                // One more turn of the event loop hands the module's fresh
                // code cache to the loader (deno_core queues it at compile).
                poll_fn(|cx| match self.poll_event_loop(cx) {
                    Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                    _ => Poll::Ready(Ok(())),
                })
                .await
                .map_err(|e| InstanceError::Bundle(e.to_string()))?;
                let namespace = self
                    .window(WindowKind::Startup, |runtime| {
                        runtime.get_module_namespace(id)
                    })
                    .map_err(|e| InstanceError::Bundle(e.to_string()))?;
                Some(namespace)
            }
        };

        let vars = app.vars.clone();
        let subrequests = app.limits.subrequests;
        let dispatcher = self.window(WindowKind::Startup, |runtime| {
            deno_core::scope!(scope, runtime);
            v8::tc_scope!(let scope, scope);
            let exported: v8::Local<v8::Value> = match &exported {
                Some(namespace) => {
                    let namespace = v8::Local::new(scope, namespace);
                    let key = v8::String::new(scope, "default").unwrap();
                    namespace
                        .get(scope, key.into())
                        .unwrap_or_else(|| v8::undefined(scope).into())
                }
                None => v8::undefined(scope).into(),
            };
            let env = v8::Object::new(scope);
            for (key, value) in &vars {
                let (Some(k), Some(v)) =
                    (v8::String::new(scope, key), v8::String::new(scope, value))
                else {
                    continue;
                };
                env.set(scope, k.into(), v.into());
            }
            let init = v8::Local::new(scope, &init);
            let undefined = v8::undefined(scope).into();
            let limits = v8::Object::new(scope);
            let key = v8::String::new(scope, "subrequests").unwrap();
            let value = v8::Integer::new_from_unsigned(scope, subrequests);
            limits.set(scope, key.into(), value.into());
            let Some(pair) = init.call(scope, undefined, &[exported, env.into(), limits.into()])
            else {
                let message = scope
                    .exception()
                    .map(|e| e.to_rust_string_lossy(scope))
                    .unwrap_or_else(|| "the bundle could not be initialised".into());
                return Err(InstanceError::Bundle(format!(
                    "{message} ({})",
                    bundle.specifier()
                )));
            };
            let pair = v8::Local::<v8::Object>::try_from(pair)
                .map_err(|_| InstanceError::Bundle("bootstrap returned no dispatcher".into()))?;
            let get = |scope: &mut v8::PinScope, name: &str| {
                let key = v8::String::new(scope, name).unwrap();
                pair.get(scope, key.into())
                    .and_then(|f| v8::Local::<v8::Function>::try_from(f).ok())
                    .map(|f| v8::Global::new(scope, f))
                    .ok_or_else(|| InstanceError::Bundle(format!("bootstrap returned no {name}")))
            };
            let context = scope.get_current_context();
            Ok::<_, InstanceError>(Dispatcher {
                dispatch: get(scope, "dispatch")?,
                abort: get(scope, "abort")?,
                context: v8::Global::new(scope, context),
            })
        })?;
        self.dispatcher = Some(Rc::new(dispatcher));
        Ok(())
    }

    /// A service-worker script reads its app's variables as globals (it
    /// has no `env`), as on Workers: each is set on the global object
    /// before the script runs, so its top-level code sees them too.
    fn define_global_bindings(&mut self, vars: &[(String, String)]) {
        if vars.is_empty() {
            return;
        }
        self.window(WindowKind::Startup, |runtime| {
            deno_core::scope!(scope, runtime);
            let global = scope.get_current_context().global(scope);
            for (key, value) in vars {
                let (Some(key), Some(value)) =
                    (v8::String::new(scope, key), v8::String::new(scope, value))
                else {
                    continue;
                };
                global.set(scope, key.into(), value.into());
            }
        });
    }

    /// Compiles and runs a classic (service-worker) script, with the
    /// version's code cache when an earlier instance made one; the first
    /// compile of a version (or one whose cache V8 rejected) makes it, after
    /// the script has run, so it also holds the functions its top-level code
    /// called. An error is reported as deno_core reports one
    /// (`file:line:column`, source-mapped).
    fn run_classic_script(&mut self, bundle: &Bundle) -> Result<(), InstanceError> {
        use v8::script_compiler::{compile, CachedData, CompileOptions, NoCacheReason, Source};
        let cache = bundle.code_cache().clone();
        let offered = cache.take_for_compile();
        self.window(WindowKind::Startup, |runtime| {
            deno_core::scope!(scope, runtime);
            v8::tc_scope!(let scope, scope);
            let (Some(name), Some(code)) = (
                v8::String::new(scope, bundle.specifier().as_str()),
                v8::String::new(scope, bundle.source()),
            ) else {
                return Err(InstanceError::Bundle(format!(
                    "the bundle is too large for V8 ({})",
                    bundle.specifier()
                )));
            };
            let origin = bundle_origin(scope, name, false);
            let (script, make_cache) = match &offered {
                Some(bytes) => {
                    let mut source =
                        Source::new_with_cached_data(code, Some(&origin), CachedData::new(bytes));
                    let script = compile(
                        scope,
                        &mut source,
                        CompileOptions::ConsumeCodeCache,
                        NoCacheReason::NoReason,
                    );
                    let rejected = source.get_cached_data().is_none_or(|data| data.rejected());
                    if rejected {
                        cache.note_rejected();
                    }
                    (script, rejected)
                }
                None => {
                    let mut source = Source::new(code, Some(&origin));
                    let script = compile(
                        scope,
                        &mut source,
                        CompileOptions::NoCompileOptions,
                        NoCacheReason::NoReason,
                    );
                    (script, true)
                }
            };
            let Some(script) = script.filter(|script| script.run(scope).is_some()) else {
                if scope.is_execution_terminating() {
                    // A limit stopped it: `load` reports which.
                    return Err(InstanceError::Bundle("terminated".into()));
                }
                let Some(exception) = scope.exception() else {
                    return Err(InstanceError::Bundle(format!(
                        "the bundle failed to run ({})",
                        bundle.specifier()
                    )));
                };
                let error = deno_core::error::exception_to_err(scope, exception, false, false);
                return Err(InstanceError::Bundle(error.to_string()));
            };
            if make_cache {
                if let Some(data) = script.get_unbound_script(scope).create_code_cache() {
                    cache.store(cache.key, &data);
                }
            }
            Ok(())
        })
    }

    /// Whether `bundle` is an ES module rather than a classic
    /// (service-worker) script. V8 decides: a bundle is a module when it does
    /// not compile as a script because of `import`/`export` syntax, however
    /// it is laid out (minified bundles are one line), or when it fails as a
    /// script for another reason but compiles as a module (top-level
    /// `await`). Anything else stays a script, so its error is reported as
    /// such.
    fn is_module(&mut self, bundle: &Bundle) -> bool {
        let name = bundle.specifier().to_string();
        self.window(WindowKind::Startup, |runtime| {
            deno_core::scope!(scope, runtime);
            v8::tc_scope!(let scope, scope);
            let Some(source) = v8::String::new(scope, bundle.source()) else {
                return false;
            };
            let Some(name) = v8::String::new(scope, &name) else {
                return false;
            };
            let origin = bundle_origin(scope, name, false);
            if v8::Script::compile(scope, source, Some(&origin)).is_some() {
                return false;
            }
            let script_error = scope
                .message()
                .map(|m| m.get(scope).to_rust_string_lossy(scope))
                .unwrap_or_default();
            if ["'export'", "import statement", "'import.meta'"]
                .iter()
                .any(|marker| script_error.contains(marker))
            {
                return true;
            }
            // No module syntax where the script parse stopped, but there
            // may be some further on (top-level `await` before the first
            // `export` stops a script parse at the `await`): a module if it
            // compiles as one. Otherwise the bundle stays a script, so its
            // error is reported in the mode it was written for.
            let origin = bundle_origin(scope, name, true);
            let mut module = v8::script_compiler::Source::new(source, Some(&origin));
            v8::script_compiler::compile_module(scope, &mut module).is_some()
        })
    }

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

    /// CPU time spent inside this instance's windows so far (until it is
    /// spawned; afterwards its driver owns it).
    pub fn cpu_time(&self) -> Duration {
        self.enforcer.total()
    }

    /// Names the version in kill events.
    pub fn set_version(&mut self, version: impl Into<Arc<str>>) {
        self.version = version.into();
    }

    /// Tells `sink` of every kill of this instance.
    pub fn set_kill_sink(&mut self, sink: KillSink) {
        self.kill_sink = Some(sink);
    }

    /// How the isolate was terminated by a limit, if it was.
    fn termination(&self) -> Option<Termination> {
        self.enforcer.slot().termination()
    }

    /// Answers every request in flight after a kill, and logs and reports
    /// the kill event. The instance must be discarded afterwards.
    fn kill(&mut self, termination: Termination) -> KillEvent {
        let reason = termination.reason;
        let (offender, cpu) = match reason {
            KillReason::StartupCpu => (None, self.enforcer.startup_used()),
            KillReason::BackgroundCpu => (None, self.enforcer.background_used()),
            KillReason::Cpu | KillReason::Memory => self
                .table
                .most_charged()
                .map_or((None, Duration::ZERO), |(id, cpu)| (Some(id), cpu)),
        };
        let (method, path) = offender
            .and_then(|id| self.table.method_and_path(id))
            .unwrap_or_default();
        let heap_now = self.window(WindowKind::Other, |runtime| {
            runtime.v8_isolate().get_heap_statistics().used_heap_size()
        });
        let heap_high_water = self.heap_high_water.max(heap_now);
        let collateral = self.table.in_flight() - usize::from(offender.is_some());
        self.table.fail_all(|id| DispatchError::Killed {
            reason,
            this_request: Some(id) == offender,
        });
        let event = KillEvent {
            app: self.table.app().to_string(),
            version: self.version.to_string(),
            reason,
            method,
            path,
            cpu_ms: cpu.as_secs_f64() * 1000.0,
            crypto_cpu_ms: self.table.crypto().total().as_secs_f64() * 1000.0,
            heap_high_water_bytes: heap_high_water,
            stack: termination.stack,
            collateral_requests: collateral,
        };
        tracing::error!(
            target: "isopod::kill",
            app = %event.app,
            version = %event.version,
            method = %event.method,
            path = %event.path,
            reason = event.reason.as_str(),
            cpu_ms = event.cpu_ms,
            crypto_cpu_ms = event.crypto_cpu_ms,
            heap_high_water_bytes = event.heap_high_water_bytes,
            stack = event.stack.as_deref().unwrap_or(""),
            collateral_requests = event.collateral_requests,
            "instance killed: {}; {} other request(s) in flight on it answered 503",
            event.reason.describe(),
            event.collateral_requests,
        );
        if let Some(sink) = &self.kill_sink {
            sink(&event);
        }
        event
    }

    /// Serves requests until every handle is gone and nothing is in flight,
    /// the event loop fails, or a limit kills the isolate (then returns
    /// true).
    async fn drive(&mut self, mut commands: local_channel::Receiver<Command>) -> bool {
        const LINGER_CHECK: Duration = Duration::from_millis(500);
        let mut handles_gone = false;
        let wait_until_timeout = self.limits.wait_until_timeout();
        let mut linger_check = tokio::time::interval(LINGER_CHECK);
        linger_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                for label in self.table.expire_lingering(wait_until_timeout) {
                    tracing::warn!(
                        target: "isopod::handler",
                        app = %self.table.app(),
                        request = %label,
                        "waitUntil work (or an abandoned handler) still unsettled {} ms after the response; no longer waited for",
                        wait_until_timeout.as_millis()
                    );
                }
            }
            let polled = self.poll_event_loop(cx);
            self.release_bodies();
            if let Some(termination) = self.termination() {
                return Poll::Ready(Stop::Killed(termination));
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

    fn poll_event_loop(
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
        let heap_max = self.limits.heap_max_bytes();
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
            // Buffers made by ops and WebAssembly memories bypass the
            // ArrayBuffer allocator; V8's external-memory figure sees them.
            let memory = self.memory.clone();
            let over = move |used: usize, external: usize| {
                used.saturating_add(external.max(memory.array_buffer_bytes())) > heap_max
            };
            if over(used, external) {
                // Garbage counts until it is collected: collect it before
                // deciding (rare: only an isolate at its budget pays).
                let (used, external) = self.window(WindowKind::Other, |runtime| {
                    let isolate = runtime.v8_isolate();
                    isolate.low_memory_notification();
                    let stats = isolate.get_heap_statistics();
                    (stats.used_heap_size(), stats.external_memory())
                });
                heap_used.store(used, Ordering::Relaxed);
                if over(used, external) {
                    self.enforcer.slot().terminate_here(KillReason::Memory);
                }
            }
        }
        polled
    }

    /// Runs `work` inside one window on this instance's isolate.
    fn window<R>(&mut self, kind: WindowKind, work: impl FnOnce(&mut JsRuntime) -> R) -> R {
        // SAFETY: `self.isolate` is the live isolate of `self.runtime`, owned
        // by this thread; the window ends before this function returns.
        let _window = unsafe { Window::enter(self.isolate, &*self.enforcer, kind) };
        work(&mut self.runtime)
    }

    /// Drives a future that works on the runtime, one window per poll, so no
    /// V8 state is live while it is suspended.
    async fn windowed<'a, T>(
        &'a mut self,
        kind: WindowKind,
        make: impl FnOnce(&'a mut JsRuntime) -> std::pin::Pin<Box<dyn Future<Output = T> + 'a>>,
    ) -> T {
        let isolate = self.isolate;
        let hooks = self.enforcer.clone();
        let mut future = {
            // SAFETY: creating the future may touch V8 (some deno_core
            // methods start work eagerly), so it is created inside a window.
            let _window = unsafe { Window::enter(isolate, &*hooks, kind) };
            make(&mut self.runtime)
        };
        poll_fn(|cx| {
            // SAFETY: the isolate outlives this future (it borrows `self`).
            let _window = unsafe { Window::enter(isolate, &*hooks, kind) };
            future.as_mut().poll(cx)
        })
        .await
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: the isolate is live until `runtime` is dropped below; it is
        // entered so that the globals are released and the `OwnedIsolate`'s
        // drop finds itself current, whatever other isolates on this thread
        // were created or dropped in between.
        unsafe { self.runtime.v8_isolate().enter() };
        self.init = None;
        self.dispatcher = None;
        crate::watchdog::forget_context(self.enforcer.slot());
        // SAFETY: dropped exactly once, here; the exit matching the enter
        // above is done by `OwnedIsolate::drop`.
        unsafe { ManuallyDrop::drop(&mut self.runtime) };
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
    table: &RequestTable,
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
    table.insert(id, request.method, request.url, responder, body_rid);
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

enum Command {
    Dispatch {
        id: u32,
        request: IncomingRequest,
        responder: Responder,
    },
    /// The client went away before the response was ready.
    Abort(u32),
}

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
    table: Weak<RequestTable>,
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

/// An exponentially weighted moving average of queue waits (weight 1/8 per
/// sample), in microseconds.
#[derive(Debug, Default)]
struct QueueWait {
    ewma_micros: Cell<u64>,
}

impl QueueWait {
    fn record(&self, wait: Duration) {
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

/// The origin a bundle is compiled under while deciding whether it is a
/// module.
fn bundle_origin<'s>(
    scope: &v8::PinScope<'s, '_>,
    name: v8::Local<'s, v8::String>,
    is_module: bool,
) -> v8::ScriptOrigin<'s> {
    v8::ScriptOrigin::new(
        scope,
        name.into(),
        0,
        0,
        false,
        0,
        None,
        false,
        false,
        is_module,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_local_thread<F: Future<Output = ()>>(make: impl FnOnce() -> F + Send + 'static) {
        crate::init_v8();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio::task::LocalSet::new().block_on(&runtime, make());
        })
        .join()
        .expect("the test thread did not panic or abort");
    }

    fn request(url: &str) -> IncomingRequest {
        IncomingRequest {
            method: http::Method::GET,
            version: http::Version::HTTP_11,
            url: url.to_string(),
            headers: Default::default(),
            body: None,
            received: std::time::Instant::now(),
        }
    }

    async fn body_text(response: OutgoingResponse) -> String {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn instances_on_one_thread_drop_in_any_order() {
        on_local_thread(|| async {
            let app = AppConfig::new("order");
            let bundle = Bundle::from_source(
                "order.js",
                "export default { fetch(r) { return new Response(new URL(r.url).pathname); } };",
            );
            // Creation order a, b, c; rusty_v8 alone would abort unless they
            // were dropped c, b, a.
            let mut a = Instance::blank(&app).unwrap();
            let b = Instance::blank(&app).unwrap();
            let mut c = Instance::blank(&app).unwrap();
            a.load(&bundle, &app).await.unwrap();
            c.load(&bundle, &app).await.unwrap();
            assert!(
                a.cpu_time() > Duration::ZERO,
                "the window hooks saw no CPU time"
            );
            drop(b);
            let handle = a.spawn();
            let response = handle.dispatch(request("http://x/first")).await.unwrap();
            assert_eq!(body_text(response).await, "/first");
            drop(c);
            let response = handle.dispatch(request("http://x/second")).await.unwrap();
            assert_eq!(body_text(response).await, "/second");
        });
    }

    #[test]
    fn dropping_many_instances_in_shuffled_orders_never_aborts() {
        on_local_thread(|| async {
            let app = AppConfig::new("shuffle");
            let bundle = Bundle::from_source(
                "s.js",
                "export default { fetch() { return new Response('s'); } };",
            );
            // A fixed pseudo-random sequence, so a failure can be replayed.
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for _round in 0..4 {
                let mut instances = Vec::new();
                for i in 0..6 {
                    let mut instance = Instance::blank(&app).unwrap();
                    if i % 2 == 0 {
                        instance.load(&bundle, &app).await.unwrap();
                    }
                    instances.push(instance);
                }
                while !instances.is_empty() {
                    let at = (next() % instances.len() as u64) as usize;
                    drop(instances.swap_remove(at));
                }
            }
        });
    }

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

    /// Loads `handler` (after 200 functions) in two instances of one version:
    /// the first compile makes the code cache, the second load is offered it
    /// and V8 takes it, and the second instance serves.
    async fn compiles_once_then_uses_the_code_cache(name: &str, handler: &str, is_module: bool) {
        let app = AppConfig::new(name);
        let body: String = (0..200)
            .map(|i| format!("function f{i}(x) {{ return x * {i} + 1; }}\n"))
            .collect();
        let bundle = Bundle::from_source(&format!("{name}.js"), format!("{body}{handler}"));
        let mut first = Instance::blank(&app).unwrap();
        first.load(&bundle, &app).await.unwrap();
        assert!(
            bundle.code_cache_len() > 0,
            "the first compile made no code cache"
        );
        assert_eq!(
            bundle.is_module().get(),
            Some(&is_module),
            "the style was not remembered"
        );
        assert_eq!(bundle.code_cache_uses(), 0);
        let mut second = Instance::blank(&app).unwrap();
        second.load(&bundle.clone(), &app).await.unwrap();
        assert_eq!(
            bundle.code_cache_uses(),
            1,
            "the second instance was not offered the cache"
        );
        if !is_module {
            // Counted for classic scripts only (deno_core does not report a
            // module's).
            assert_eq!(bundle.code_cache_rejections(), 0, "V8 refused the cache");
        }
        let handle = second.spawn();
        let response = handle.dispatch(request("http://x/")).await.unwrap();
        assert_eq!(body_text(response).await, "43");
        drop(first);
    }

    #[test]
    fn a_version_compiles_once_and_later_instances_use_its_code_cache() {
        on_local_thread(|| async {
            compiles_once_then_uses_the_code_cache(
                "cached",
                "export default { fetch() { return new Response(String(f7(6))); } };",
                true,
            )
            .await;
            // Another source is another cache.
            let other = Bundle::from_source(
                "cached.js",
                "export default { fetch() { return new Response('o'); } };",
            );
            assert_eq!(other.code_cache_len(), 0);
        });
    }

    #[test]
    fn a_classic_script_version_compiles_once_and_later_instances_use_its_code_cache() {
        on_local_thread(|| async {
            compiles_once_then_uses_the_code_cache(
                "cached-script",
                "addEventListener('fetch', (e) => e.respondWith(new Response(String(f7(6)))));",
                false,
            )
            .await;
        });
    }
}
