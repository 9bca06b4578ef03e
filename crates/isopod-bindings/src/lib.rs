//! The Workers bindings an app reaches on `env`: KV namespaces and D1
//! databases, as the JavaScript classes Workers code already calls
//! (`env.CACHE.get(key)`, `env.DB.prepare(sql).bind(id).first()`), over
//! the storage of `isopod-store`.
//!
//! The JavaScript lives in the startup snapshot with the rest of the API;
//! an app's bindings are per instance: [`install`] puts the resolved
//! handles into the isolate's `OpState` when the instance learns its app,
//! and the bootstrap builds one object per binding on `env`, holding only
//! the binding's index. Every storage call is an async op: the isolate's
//! thread only starts it, SQLite runs on blocking threads and Redis on its
//! own runtime, so a request's CPU time is charged for what isopod does
//! for it, not for the time it waits.
//!
//! Invariants:
//! - An op reaches only the handles installed for the isolate's own app,
//!   by index; whatever key, cursor or SQL it passes, the store keeps it
//!   inside that namespace or database.
//! - Errors reach JavaScript with Workers' classes and messages (the
//!   store's `Display`): a `TypeError` for a bad key, an `Error` otherwise.

use std::sync::Arc;

mod d1;
mod kv;

pub use isopod_store::d1::D1Database;
pub use isopod_store::kv::KvNamespace;

deno_core::extension!(
    isopod_bindings,
    ops = [
        kv::op_isopod_kv_get,
        kv::op_isopod_kv_get_many,
        kv::op_isopod_kv_put,
        kv::op_isopod_kv_delete,
        kv::op_isopod_kv_list,
        d1::op_isopod_d1_query,
        d1::op_isopod_d1_batch,
        d1::op_isopod_d1_exec,
    ],
    esm = [
        dir "js",
        "bytes.js",
        "kv.js",
        "d1.js",
    ],
);

/// What one binding on `env` reaches.
#[derive(Clone)]
pub enum BindingTarget {
    /// A KV namespace.
    Kv(KvNamespace),
    /// A D1 database.
    D1(D1Database),
}

/// One binding: the name on `env` and what it reaches.
#[derive(Clone)]
pub struct Binding {
    /// The property of `env` (and, for a service-worker script, the
    /// global) it appears as.
    pub name: String,
    /// The namespace or database.
    pub target: BindingTarget,
}

/// An app's bindings, in declaration order. Cheap to clone: every instance
/// of the app shares them.
#[derive(Clone, Default)]
pub struct Bindings {
    entries: Arc<[Binding]>,
}

impl std::fmt::Debug for Bindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|binding| {
                let (kind, target) = binding.describe();
                format!("{} = {kind} {target}", binding.name)
            }))
            .finish()
    }
}

impl Binding {
    /// The kind (`kv` or `d1`) and the namespace's or database's name.
    pub fn describe(&self) -> (&'static str, &str) {
        match &self.target {
            BindingTarget::Kv(namespace) => ("kv", namespace.name()),
            BindingTarget::D1(database) => ("d1", database.name()),
        }
    }
}

impl Bindings {
    /// Bindings in this order.
    pub fn new(entries: Vec<Binding>) -> Bindings {
        Bindings {
            entries: entries.into(),
        }
    }

    /// The bindings, in order: a binding's index is what its JavaScript
    /// object holds.
    pub fn entries(&self) -> &[Binding] {
        &self.entries
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Makes `bindings` the ones the isolate's ops reach (replacing any
/// earlier ones: an instance serves one app).
pub fn install(state: &mut deno_core::OpState, bindings: Bindings) {
    state.put(bindings);
}

/// The binding at `index` of the isolate's app, if it is of the kind
/// `pick` accepts.
fn target<T>(
    state: &std::rc::Rc<std::cell::RefCell<deno_core::OpState>>,
    index: u32,
    pick: impl FnOnce(&BindingTarget) -> Option<T>,
) -> Result<T, deno_error::JsErrorBox> {
    let state = state.borrow();
    state
        .try_borrow::<Bindings>()
        .and_then(|bindings| bindings.entries.get(index as usize))
        .and_then(|binding| pick(&binding.target))
        .ok_or_else(|| deno_error::JsErrorBox::type_error("this binding is not the app's"))
}
