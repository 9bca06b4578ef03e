//! Loading a bundle into a blank instance.
//!
//! [`Instance::load`] evaluates the bundle under the app's startup budget:
//! an ES module through the module loader (which hands over the version's
//! code cache), or a classic service-worker script compiled here with that
//! cache, after the app's variables are set as globals. The bootstrap's
//! `init` then wires the handler and returns the dispatcher the driver calls.
//!
//! Invariants: one bundle per instance; whether a bundle is a module is
//! decided once per version; a limit that stops top-level code fails the
//! load as a kill, and the instance is unusable afterwards.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use deno_core::{v8, JsRuntime, PollEventLoopOptions};

use super::code_cache::PendingCodeCache;
use super::compile::{self, PrecompiledModule};
use super::{AppConfig, Dispatcher, Instance, InstanceError};
use crate::bundle::Bundle;
use crate::limits::KillReason;
use crate::window::WindowKind;

impl Instance {
    /// Evaluates `bundle` in this blank instance and wires its handler. A
    /// bundle that fails to compile, throws at top level or has no handler
    /// is refused with a message naming `file:line:column`.
    ///
    /// Top-level code runs under the app's startup CPU budget; past it, or
    /// past the memory limit, the load fails and the instance is unusable.
    pub async fn load(&mut self, bundle: &Bundle, app: &AppConfig) -> Result<(), InstanceError> {
        self.enforcer.set_limits(&app.limits);
        let started = std::time::Instant::now();
        let loaded = self.load_bundle(bundle, app).await;
        match self.termination() {
            None => {
                if loaded.is_ok() {
                    bundle.note_load_time(started.elapsed());
                }
                loaded
            }
            Some(termination) => {
                let event = self.kill(termination);
                let limits = self.enforcer.limits();
                Err(InstanceError::Bundle(match event.reason {
                    KillReason::Memory => format!(
                        "the bundle's top-level code exceeded the memory limit of {} MiB ({})",
                        limits.heap_max_mb,
                        bundle.specifier()
                    ),
                    _ => format!(
                        "the bundle's top-level code exceeded its startup CPU budget of {} ms ({})",
                        limits.startup_cpu_ms,
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
        self.set_app(app)?;
        self.loader.set_bundle(bundle);
        // Decided once per version (the bundle remembers), not per instance:
        // finding out may parse the whole bundle.
        let is_module = *bundle.is_module().get_or_init(|| self.is_module(bundle));
        let exported = match is_module {
            false => {
                self.window(WindowKind::Startup, |runtime| {
                    set_globals(runtime, &app.vars)
                });
                self.run_classic_script(bundle)?;
                self.window(WindowKind::Startup, |runtime| {
                    deno_core::scope!(scope, runtime);
                    let undefined: v8::Local<v8::Value> = v8::undefined(scope).into();
                    v8::Global::new(scope, undefined)
                })
            }
            true => {
                // Compiled here first, from the shared source, so that
                // deno_core's compile through the loader is a hit that
                // returns this script (`compile.rs`).
                // Held (in `self`, so that any drop is inside the isolate)
                // until deno_core's compile is done: a collection in between
                // would drop V8's cache entry with the last reference.
                self.precompiled_module = self.window(WindowKind::Startup, |runtime| {
                    deno_core::scope!(scope, runtime);
                    precompile_module(scope, bundle)
                });
                self.loader
                    .set_precompiled(self.precompiled_module.is_some());
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
                let precompiled = self.precompiled_module.take();
                let (exported, pending) = self
                    .window(WindowKind::Startup, move |runtime| {
                        let namespace = runtime.get_module_namespace(id)?;
                        deno_core::scope!(scope, runtime);
                        let namespace = v8::Local::new(scope, namespace);
                        let key = v8::String::new(scope, "default").unwrap();
                        let exported = namespace
                            .get(scope, key.into())
                            .unwrap_or_else(|| v8::undefined(scope).into());
                        let pending = precompiled.and_then(|precompiled| {
                            PendingCodeCache::module(scope, bundle, exported, precompiled)
                        });
                        Ok::<_, deno_core::error::CoreError>((
                            v8::Global::new(scope, exported),
                            pending,
                        ))
                    })
                    .map_err(|e| InstanceError::Bundle(e.to_string()))?;
                self.pending_code_cache = pending;
                exported
            }
        };
        self.wire(init, exported, &app.vars, &app.bindings, bundle)
    }

    /// Tells a blank instance (made before its app was known) or one from a
    /// snapshot which app it serves, and where its `fetch` may go.
    pub(super) fn set_app(&mut self, app: &AppConfig) -> Result<(), InstanceError> {
        self.table.set_app(app.name.clone(), app.fetches.clone());
        let state = self.runtime.op_state();
        let mut state = state.borrow_mut();
        isopod_api::set_net_policy(&mut state, &app.net)?;
        isopod_bindings::install(&mut state, app.bindings.clone());
        Ok(())
    }

    /// Calls the bootstrap's `init` with the bundle's default export
    /// (`undefined` for a service-worker script) and the app's `env`, and
    /// keeps the dispatcher it returns: the instance is ready to serve.
    pub(super) fn wire(
        &mut self,
        init: v8::Global<v8::Function>,
        exported: v8::Global<v8::Value>,
        vars: &[(String, String)],
        bindings: &isopod_bindings::Bindings,
        bundle: &Bundle,
    ) -> Result<(), InstanceError> {
        let subrequests = self.enforcer.subrequests();
        let dispatcher = self.window(WindowKind::Startup, |runtime| {
            deno_core::scope!(scope, runtime);
            v8::tc_scope!(let scope, scope);
            let exported = v8::Local::new(scope, exported);
            let env = v8::Object::new(scope);
            for (key, value) in vars {
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
            // The app's bindings as [name, kind, index]: the bootstrap puts
            // each on `env`.
            let listed = v8::Array::new(scope, bindings.entries().len() as i32);
            for (index, binding) in bindings.entries().iter().enumerate() {
                let (kind, _) = binding.describe();
                let (Some(name), Some(kind)) = (
                    v8::String::new(scope, &binding.name),
                    v8::String::new(scope, kind),
                ) else {
                    continue;
                };
                let position = v8::Integer::new_from_unsigned(scope, index as u32);
                let entry = v8::Array::new_with_elements(
                    scope,
                    &[name.into(), kind.into(), position.into()],
                );
                listed.set_index(scope, index as u32, entry.into());
            }
            let Some(pair) = init.call(
                scope,
                undefined,
                &[exported, env.into(), limits.into(), listed.into()],
            ) else {
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

    /// Compiles and runs a classic (service-worker) script, with the
    /// version's code cache when an earlier instance made one; the first
    /// compile of a version (or one whose cache V8 rejected) makes it, after
    /// the script has run, so it also holds the functions its top-level code
    /// called, and the script is kept for the cache made after the first
    /// request (`code_cache.rs`). An error is reported as deno_core reports
    /// one (`file:line:column`, source-mapped).
    fn run_classic_script(&mut self, bundle: &Bundle) -> Result<(), InstanceError> {
        let pending = self.window(WindowKind::Startup, |runtime| {
            deno_core::scope!(scope, runtime);
            v8::tc_scope!(let scope, scope);
            let compiled = compile::compile_script(scope, bundle);
            let ran = compiled.filter(|compiled| compiled.compiled.run(scope).is_some());
            let Some(compiled) = ran else {
                if scope.is_execution_terminating() {
                    // A limit stopped it: `load` reports which.
                    return Err(InstanceError::Terminated);
                }
                let Some(exception) = scope.exception() else {
                    return Err(InstanceError::Bundle(format!(
                        "the bundle failed to compile or run ({})",
                        bundle.specifier()
                    )));
                };
                let error = deno_core::error::exception_to_err(scope, exception, false, false);
                return Err(InstanceError::Bundle(error.to_string()));
            };
            let script = compiled.compiled;
            if compiled.needs_cache {
                if let Some(data) = script.get_unbound_script(scope).create_code_cache() {
                    let cache = bundle.code_cache();
                    cache.store_compiled(cache.key, &data);
                }
            }
            Ok(PendingCodeCache::classic(scope, script, bundle))
        })?;
        self.pending_code_cache = pending;
        Ok(())
    }

    /// Whether `bundle` is an ES module rather than a classic
    /// (service-worker) script. V8 decides: a bundle is a module when it does
    /// not compile as a script because of `import`/`export` syntax, however
    /// it is laid out (minified bundles are one line), or when it fails as a
    /// script for another reason but compiles as a module (top-level
    /// `await`). Anything else stays a script, so its error is reported as
    /// such.
    fn is_module(&mut self, bundle: &Bundle) -> bool {
        self.window(WindowKind::Startup, |runtime| {
            bundle_is_module(runtime, bundle)
        })
    }

    /// CPU time spent inside this instance's windows so far (until it is
    /// spawned; afterwards its driver owns it).
    pub fn cpu_time(&self) -> Duration {
        self.enforcer.total()
    }
}

/// A service-worker script reads its app's variables as globals (it has no
/// `env`), as on Workers: each is set on the global object before the script
/// runs, so its top-level code sees them too.
pub(crate) fn set_globals(runtime: &mut JsRuntime, vars: &[(String, String)]) {
    if vars.is_empty() {
        return;
    }
    deno_core::scope!(scope, runtime);
    let global = scope.get_current_context().global(scope);
    for (key, value) in vars {
        let (Some(key), Some(value)) = (v8::String::new(scope, key), v8::String::new(scope, value))
        else {
            continue;
        };
        global.set(scope, key.into(), value.into());
    }
}

/// Whether `bundle` is an ES module rather than a classic script (see
/// `Instance::is_module`); call it inside a window.
pub(crate) fn bundle_is_module(runtime: &mut JsRuntime, bundle: &Bundle) -> bool {
    let name = bundle.specifier().to_string();
    deno_core::scope!(scope, runtime);
    v8::tc_scope!(let scope, scope);
    let Some(source) = bundle.shared_source().v8_string(scope) else {
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
}

/// The origin a bundle is compiled under while deciding whether it is a
/// module.
/// Compiles `bundle` as a module (see `compile.rs`) and stores the
/// compile's cache when the version needs one. `None` when it does not
/// compile (deno_core's compile then reports why).
fn precompile_module(scope: &mut v8::PinScope, bundle: &Bundle) -> Option<PrecompiledModule> {
    let compiled = compile::compile_module(scope, bundle)?;
    let script = compiled.compiled.get_unbound_module_script(scope);
    if compiled.needs_cache {
        if let Some(data) = script.create_code_cache() {
            let cache = bundle.code_cache();
            cache.store_compiled(cache.key, &data);
        }
    }
    Some(PrecompiledModule {
        script_id: compiled.compiled.script_id()?,
        script: v8::Global::new(scope, script),
    })
}

pub(super) fn bundle_origin<'s>(
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
    use std::time::Duration;

    use super::super::test_support::{body_text, on_local_thread, request};
    use super::super::{AppConfig, Instance};
    use crate::bundle::Bundle;
    use crate::window::WindowKind;

    /// 200 functions V8 compiles lazily, `all`, which calls them all, and
    /// `handler`, which answers `all(1)` (20100): a request compiles them.
    fn bundle_of_functions(name: &str, handler: &str) -> Bundle {
        let mut body: String = (0..200)
            .map(|i| format!("function f{i}(x) {{ return x * {i} + 1; }}\n"))
            .collect();
        let calls: Vec<String> = (0..200).map(|i| format!("f{i}(x)")).collect();
        body.push_str(&format!(
            "function all(x) {{ return {}; }}\n",
            calls.join(" + ")
        ));
        Bundle::from_source(&format!("{name}.js"), format!("{body}{handler}"))
    }

    /// Waits until an instance's driver has made the version's cache after
    /// its first request (it does when the instance falls idle).
    async fn cache_made_after_execution(bundle: &Bundle) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !bundle.code_cache_after_execution() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("no code cache was made after the first request");
    }

    /// Three instances of one version: the first compile makes the cache of
    /// what V8 compiled eagerly; the second instance is offered it, V8
    /// takes it, and once its first request ran the instance makes the
    /// cache again, now holding every function that ran; the third instance
    /// is offered that one, V8 takes it, and it serves.
    async fn compiles_once_then_uses_the_code_cache(name: &str, handler: &str, is_module: bool) {
        let app = AppConfig::new(name);
        let bundle = bundle_of_functions(name, handler);
        let mut first = Instance::blank(&app).unwrap();
        first.load(&bundle, &app).await.unwrap();
        let eager = bundle.code_cache_len();
        assert!(eager > 0, "the first compile made no code cache");
        assert!(!bundle.code_cache_after_execution());
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
        assert_eq!(bundle.code_cache_rejections(), 0, "V8 refused the cache");
        let handle = second.spawn();
        // The driver first runs idle, as a warm instance does before its
        // first request: that is no request run.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(!bundle.code_cache_after_execution());
        let response = handle.dispatch(request("http://x/")).await.unwrap();
        assert_eq!(body_text(response).await, "20100");
        cache_made_after_execution(&bundle).await;
        assert!(
            bundle.code_cache_len() > eager + 200 * 20,
            "the cache made after execution ({} bytes) holds no more than the compile's ({eager})",
            bundle.code_cache_len()
        );
        let mut third = Instance::blank(&app).unwrap();
        third.load(&bundle.clone(), &app).await.unwrap();
        assert_eq!(bundle.code_cache_uses(), 2);
        assert_eq!(bundle.code_cache_rejections(), 0, "V8 refused the cache");
        let response = third.spawn().dispatch(request("http://x/")).await.unwrap();
        assert_eq!(body_text(response).await, "20100");
        drop(first);
    }

    #[test]
    fn a_module_version_compiles_once_and_later_instances_use_its_code_cache() {
        on_local_thread(|| async {
            compiles_once_then_uses_the_code_cache(
                "cached",
                "export default { fetch() { return new Response(String(all(1))); } };",
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
                "addEventListener('fetch', (e) => e.respondWith(new Response(String(all(1)))));",
                false,
            )
            .await;
        });
    }

    /// A cache V8 refuses (here, bytes that are no cache) is counted as
    /// rejected, for a module as for a script, and the compile that had to
    /// start from source makes a usable one.
    #[test]
    fn a_rejected_code_cache_is_counted_and_made_again() {
        on_local_thread(|| async {
            for (name, handler, is_module) in [
                (
                    "refused",
                    "export default { fetch() { return new Response(String(all(1))); } };",
                    true,
                ),
                (
                    "refused-script",
                    "addEventListener('fetch', (e) => e.respondWith(new Response(String(all(1)))));",
                    false,
                ),
            ] {
                let app = AppConfig::new(name);
                let bundle = bundle_of_functions(name, handler);
                // As for a version's later instances: finding out the style
                // compiles the source, and V8 would then take that compile
                // from its own in-isolate cache instead of reading ours.
                bundle.is_module().set(is_module).unwrap();
                let cache = bundle.code_cache();
                cache.store_compiled(cache.key, &[7; 512]);
                let before = crate::code_cache_counts();
                let mut instance = Instance::blank(&app).unwrap();
                instance.load(&bundle, &app).await.unwrap();
                assert_eq!(bundle.code_cache_uses(), 1, "{name}");
                assert_eq!(bundle.code_cache_rejections(), 1, "{name}");
                let after = crate::code_cache_counts();
                assert!(after.offers > before.offers && after.rejections > before.rejections);
                assert_ne!(bundle.code_cache_len(), 512, "{name}: no new cache was made");
                let mut next = Instance::blank(&app).unwrap();
                next.load(&bundle, &app).await.unwrap();
                assert_eq!(bundle.code_cache_rejections(), 1, "{name}: the new cache was refused");
                let response = next.spawn().dispatch(request("http://x/")).await.unwrap();
                assert_eq!(body_text(response).await, "20100");
            }
        });
    }

    /// Every instance of a version reads one copy of its source, outside
    /// the heap, and gives its reference back when it goes: for a module
    /// and a script, ASCII or not.
    #[test]
    fn instances_share_their_version_source_and_give_it_back() {
        on_local_thread(|| async {
            for (name, handler) in [
                ("shared", "export default { fetch() { return new Response('\u{2014}' + all(1)); } };"),
                ("shared-latin1", "export default { fetch() { return new Response('\u{e9}' + all(1)); } };"),
                ("shared-ascii", "export default { fetch() { return new Response('-' + all(1)); } };"),
                ("shared-script", "// caf\u{e9} \u{2014}\naddEventListener('fetch', (e) => e.respondWith(new Response('-' + all(1))));"),
            ] {
                let app = AppConfig::new(name);
                let bundle = bundle_of_functions(name, handler);
                // An ASCII source is the bundle's own text, which its clones
                // count too: only the others count strings alone.
                let strings_alone = !bundle.source().is_ascii();
                let before = bundle.shared_source().references();
                let external = |instance: &mut Instance| {
                    instance.window(WindowKind::Other, |runtime| {
                        let isolate = runtime.v8_isolate();
                        // Whatever no script holds goes: what is left is
                        // what the module (or script) deno_core runs reads.
                        isolate.low_memory_notification();
                        isolate.get_heap_statistics().external_memory()
                    })
                };
                let blank = external(&mut Instance::blank(&app).unwrap());
                let mut instances = Vec::new();
                for _ in 0..3 {
                    let mut instance = Instance::blank(&app).unwrap();
                    instance.load(&bundle, &app).await.unwrap();
                    // V8 counts an external string's characters there.
                    assert!(
                        external(&mut instance) >= blank + bundle.source().chars().count(),
                        "{name}: the script's source is not external"
                    );
                    instances.push(instance.spawn());
                }
                let held = bundle.shared_source().references() - before;
                if strings_alone {
                    assert_eq!(held, 3, "{name}: not one string of the shared source per instance");
                } else {
                    assert!(held >= 3, "{name}: the instances do not read the shared source");
                }
                for handle in &instances {
                    let response = handle.dispatch(request("http://x/")).await.unwrap();
                    assert!(body_text(response).await.ends_with("20100"));
                }
                drop(instances);
                tokio::time::timeout(Duration::from_secs(10), async {
                    while bundle.shared_source().references() > before {
                        tokio::task::yield_now().await;
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("{name}: a reference to the source outlived its isolate"));
            }
        });
    }
}
