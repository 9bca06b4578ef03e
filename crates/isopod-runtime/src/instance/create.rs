//! Creating an instance, and dropping it.
//!
//! [`Instance::blank`] makes the isolate from the startup snapshot (the
//! expensive part: milliseconds) under the app's heap limits, registers its
//! watch slot with the watchdog, installs the near-heap-limit callback that
//! turns V8's last resort into a memory kill, and runs the bootstrap's
//! hand-over. The instance is blank: any app's bundle may be loaded in it.
//!
//! Invariants: the isolate is exited right after creation and entered only
//! inside windows from then on; its heap limits are fixed for its life;
//! `Drop` enters it before releasing anything, so instances on one thread
//! may be dropped in any order.

use std::mem::ManuallyDrop;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use deno_core::{v8, JsRuntime, RuntimeOptions};
use isopod_api::{IsolateOptions, NetPolicy};
use tokio::sync::mpsc;

use super::Instance;
use crate::bundle::Bundle;
use crate::enforcer::LimitEnforcer;
use crate::instance_host::{as_host, InstanceHost};
use crate::limits::Limits;
use crate::loader::BundleLoader;
use crate::memory::MemoryBudget;
use crate::snapshot::{RESIDUAL_LAZY_ESM, RESIDUAL_LAZY_JS, SNAPSHOT};
use crate::version_snapshot::VersionSnapshot;
use crate::watchdog::WatchSlot;
use crate::window::WindowKind;

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
    /// Where its instances count their outbound fetches (shared by every
    /// instance of the app, for the host's metrics).
    pub fetches: Arc<isopod_api::FetchCounts>,
    /// Whether its versions get startup snapshots, and on what terms.
    pub snapshot: SnapshotPolicy,
    /// Its storage bindings (KV namespaces, D1 databases) on `env`.
    pub bindings: isopod_bindings::Bindings,
}

/// Whether an app's versions get startup snapshots
/// ([`crate::version_snapshot`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotPolicy {
    /// A snapshot unless top-level code does something a snapshot must not
    /// hold or share (the default).
    #[default]
    On,
    /// Never: every instance runs the bundle's top-level code.
    Off,
    /// As `On`, except that `Math.random()` at top level is allowed: every
    /// instance of the version starts with the values top-level code drew
    /// (as if drawn once, at deploy), and draws its own from then on. For
    /// libraries that salt names with it; `crypto`'s randomness still
    /// refuses the snapshot.
    ShareRandom,
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
            fetches: Arc::default(),
            snapshot: SnapshotPolicy::default(),
            bindings: Default::default(),
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
    /// A limit (CPU or memory) terminated the bundle's top-level code.
    /// [`Instance::load`] reports it as [`InstanceError::Bundle`], saying
    /// which limit; it never leaves the crate as this variant.
    #[error("a limit stopped the bundle's top-level code")]
    Terminated,
    /// The network policy is malformed.
    #[error(transparent)]
    Permissions(#[from] isopod_api::PermissionError),
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
        let mut instance = Instance::create(app, SNAPSHOT, None)?;
        let init = instance.bootstrap("globalThis.__isopodInit()")?;
        let init = instance.window(WindowKind::Startup, |runtime| {
            deno_core::scope!(scope, runtime);
            let init = v8::Local::new(scope, init);
            let init = v8::Local::<v8::Function>::try_from(init)
                .map_err(|_| InstanceError::Create("bootstrap returned no init".into()))?;
            Ok::<_, InstanceError>(v8::Global::new(scope, init))
        })?;
        instance.init = Some(init);
        Ok(instance)
    }

    /// Creates an instance of a version from the version's own snapshot
    /// ([`crate::version_snapshot`]): the bundle's top-level code already
    /// ran when the snapshot was made, so the instance is ready to
    /// [`Instance::spawn`]. `bundle` names the version in errors.
    ///
    /// Costs V8's deserialisation of the snapshot (more than a blank
    /// instance for a larger heap), and no compile or top-level run.
    pub fn from_snapshot(
        snapshot: &VersionSnapshot,
        bundle: &Bundle,
        app: &AppConfig,
    ) -> Result<Instance, InstanceError> {
        let bytes = snapshot.bytes().clone();
        // SAFETY: the slice points into `bytes`, which the instance keeps
        // (`startup_bytes`) until after its runtime, and so its isolate and
        // everything deno_core deserialised from the snapshot, is dropped.
        let startup: &'static [u8] =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
        let mut instance = Instance::create(app, startup, Some(bytes))?;
        let resumed = instance.bootstrap("globalThis.__isopodResume()")?;
        let (init, exported) = instance.window(WindowKind::Startup, |runtime| {
            deno_core::scope!(scope, runtime);
            let pair = v8::Local::new(scope, resumed);
            let pair = v8::Local::<v8::Array>::try_from(pair)
                .map_err(|_| InstanceError::Create("the snapshot has no resume".into()))?;
            let init = pair
                .get_index(scope, 0)
                .and_then(|f| v8::Local::<v8::Function>::try_from(f).ok())
                .ok_or_else(|| InstanceError::Create("the snapshot has no init".into()))?;
            let exported = pair
                .get_index(scope, 1)
                .unwrap_or_else(|| v8::undefined(scope).into());
            Ok::<_, InstanceError>((
                v8::Global::new(scope, init),
                v8::Global::new(scope, exported),
            ))
        })?;
        instance.enforcer.set_limits(&app.limits);
        instance.set_app(app)?;
        instance.wire(init, exported, &app.vars, &app.bindings, bundle)?;
        Ok(instance)
    }

    /// The isolate from `startup` (isopod's API snapshot or a version's),
    /// exited, with its limits, watch slot and heap callback; before any
    /// JavaScript runs in it. `startup_bytes` owns `startup` when it is not
    /// the embedded snapshot.
    fn create(
        app: &AppConfig,
        startup: &'static [u8],
        startup_bytes: Option<Arc<[u8]>>,
    ) -> Result<Instance, InstanceError> {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let table = InstanceHost::new(app.name.clone(), control_tx);
        let loader = Rc::new(BundleLoader::default());
        let heap_used = Arc::new(AtomicUsize::new(0));
        let memory = MemoryBudget::for_heap_max(app.limits.heap_max_bytes(), heap_used.clone());
        let create_params = v8::CreateParams::default()
            .heap_limits(app.limits.heap_initial_bytes(), app.limits.heap_max_bytes())
            .array_buffer_allocator(memory.allocator().make_shared());

        let mut runtime = JsRuntime::try_new(RuntimeOptions {
            create_params: Some(create_params),
            startup_snapshot: Some(startup),
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
        let enforcer = Rc::new(LimitEnforcer::new(slot, table.clone(), &app.limits));
        let heap_enforcer = enforcer.clone();
        // SAFETY: used only inside the callback, which V8 calls on this
        // isolate's thread while the isolate is alive.
        let heap_isolate = unsafe { runtime.v8_isolate().as_raw_isolate_ptr() };
        runtime.add_near_heap_limit_callback(move |current, _initial| {
            // SAFETY: see above; a non-owning view to read statistics.
            let mut isolate = unsafe { v8::Isolate::from_raw_isolate_ptr(heap_isolate) };
            let used = isolate.get_heap_statistics().used_heap_size();
            heap_enforcer.near_heap_limit(current, used)
        });
        // SAFETY: the pointer is only used while `runtime` (and so the
        // isolate) is alive: `Drop` releases the runtime last.
        let isolate = unsafe { runtime.v8_isolate().as_raw_isolate_ptr() };
        // SAFETY: rusty_v8 entered the new isolate on creation; nothing else
        // has entered an isolate since, so it is the current one. From here on
        // it is entered only inside windows.
        unsafe { runtime.v8_isolate().exit() };

        Ok(Instance {
            isolate,
            enforcer,
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
            dispatches: 0,
            init: None,
            dispatcher: None,
            pending_code_cache: None,
            precompiled_module: None,
            runtime: ManuallyDrop::new(runtime),
            startup_bytes,
        })
    }

    /// Per-isolate state and the bootstrap's hand-over (`hand_over`, a
    /// script whose value is returned), before any tenant code: after this,
    /// no tenant-reachable name leads to an op.
    fn bootstrap(
        &mut self,
        hand_over: &'static str,
    ) -> Result<v8::Global<v8::Value>, InstanceError> {
        let host = as_host(&self.table);
        let options = IsolateOptions {
            user_agent: "isopod".to_string(),
            blob_store: None,
        };
        self.window(WindowKind::Startup, |runtime| {
            runtime
                .lazy_init_extensions(isopod_api::extension_args(&options))
                .map_err(|e| InstanceError::Create(e.to_string()))?;
            isopod_api::install_host(&mut runtime.op_state().borrow_mut(), host);
            let handed_over = runtime
                .execute_script("isopod:bootstrap", hand_over)
                .map_err(|e| InstanceError::Create(e.to_string()))?;
            deno_core::scope!(scope, runtime);
            // Code generation from strings (eval, new Function, …) is refused
            // from here on; V8 itself enforces it.
            scope
                .get_current_context()
                .set_allow_generation_from_strings(false);
            Ok(handed_over)
        })
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
        self.pending_code_cache = None;
        self.precompiled_module = None;
        crate::watchdog::forget_context(self.enforcer.slot());
        // SAFETY: dropped exactly once, here; the exit matching the enter
        // above is done by `OwnedIsolate::drop`.
        unsafe { ManuallyDrop::drop(&mut self.runtime) };
        // Only now may a version snapshot's bytes go.
        self.startup_bytes = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{body_text, on_local_thread, request};
    use super::super::{AppConfig, Instance};
    use crate::bundle::Bundle;

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
}
