//! The JavaScript API surface of isopod.
//!
//! This crate is the `api/` half of isopod (in workerd's sense): it defines
//! what tenant code can see, and nothing about how requests reach it. It
//! assembles the deno extension crates (`deno_webidl`, `deno_web`,
//! `deno_fetch`, `deno_crypto`) and isopod's own `isopod_api` extension, whose
//! bootstrap module builds the Workers global scope and whose ops are the
//! narrow interface to the host: log records, responses, failures and
//! request completion, delivered through the [`Host`] trait object stored in
//! each isolate's `OpState`.
//!
//! Invariants:
//! - [`extensions`] returns the same extensions, in the same order, at
//!   snapshot time and at run time; per-isolate options go in afterwards
//!   through [`extension_args`] (the snapshot cannot hold them).
//! - Tenant code can reach no op and no deno internal: the bootstrap keeps
//!   them in closures and removes `Deno` and `__bootstrap` from the global
//!   object before the tenant's bundle is evaluated.

pub mod address;
mod clock;
mod crypto;
mod host;
mod permissions;
mod snapshot_watch;

pub use address::{classify, ReservedRange};
pub use clock::{advance_clock, monotonic_ns};
pub use crypto::warm_up_crypto;
pub use host::{
    FailureKind, FetchCounts, FetchOutcome, HandlerBody, Host, HostResponse, LogLevel, UncaughtKind,
};
pub use permissions::{deny_own_listeners, NetPolicy, PermissionError};
pub use snapshot_watch::WatchedBlobStore;

use deno_core::{Extension, ExtensionArguments};

deno_core::extension!(
    isopod_api,
    deps = [deno_webidl, deno_web, deno_fetch, deno_crypto, isopod_bindings],
    ops = [
        host::op_isopod_log,
        host::op_isopod_respond,
        host::op_isopod_respond_text,
        host::op_isopod_respond_bytes,
        host::op_isopod_respond_stream,
        host::op_isopod_fail,
        host::op_isopod_done,
        host::op_isopod_uncaught,
        host::op_isopod_fetched,
        permissions::op_isopod_fetch_refusal,
        clock::op_isopod_clock,
        crypto::op_isopod_in_crypto_pool,
    ],
    esm_entry_point = "ext:isopod_api/10_global_scope.js",
    esm = [
        dir "js",
        "00_stubs.js",
        "04_error_classes.js",
        "10_global_scope.js",
    ],
    lazy_loaded_js = [
        dir "js",
        "ext:deno_net/02_tls.js" = "01_tls_stub.js",
        "02_captured_ops.js",
        "03_fast_ops.js",
    ],
);

/// The extensions of an isopod isolate, in load order, without per-isolate
/// options. Used unchanged for the startup snapshot and for every isolate
/// created from it.
pub fn extensions() -> Vec<Extension> {
    vec![
        deno_webidl::deno_webidl::init(),
        deno_web::deno_web::lazy_init(),
        deno_fetch::deno_fetch::lazy_init(),
        deno_crypto::deno_crypto::lazy_init(),
        isopod_bindings::isopod_bindings::init(),
        isopod_api::init(),
    ]
}

/// Per-isolate options for the extensions that take them.
pub struct IsolateOptions {
    /// The `User-Agent` sent by outbound `fetch`.
    pub user_agent: String,
    /// Where `Blob` and `File` contents live; `None` gives the isolate a
    /// store of its own. (The snapshotting isolate passes one that counts,
    /// since a Blob's bytes cannot go into a snapshot.)
    pub blob_store: Option<std::sync::Arc<dyn deno_web::BlobStoreTrait>>,
}

/// The per-isolate arguments matching [`extensions`], for
/// `JsRuntime::lazy_init_extensions`.
pub fn extension_args(options: &IsolateOptions) -> Vec<ExtensionArguments> {
    vec![
        deno_web::deno_web::args(
            options
                .blob_store
                .clone()
                .unwrap_or_else(deno_web::BlobStore::default_arc),
            None,
            false,
            Default::default(),
        ),
        deno_fetch::deno_fetch::args(deno_fetch::Options {
            user_agent: options.user_agent.clone(),
            ..Default::default()
        }),
        deno_crypto::deno_crypto::args(None),
    ]
}

/// Puts the [`Host`] that receives the bootstrap's calls into a fresh
/// isolate's `OpState`.
pub fn install_host(state: &mut deno_core::OpState, host: std::rc::Rc<dyn Host>) {
    state.put(host);
}

/// Sets where `fetch` may go: the permission container deno_fetch checks,
/// the resolver it resolves host names with, and what the refusal messages
/// need (see [`NetPolicy`] for how these divide the work). Needed before
/// tenant code runs (deno_fetch's op requires a container); set when a
/// bundle is loaded, since a blank isolate does not know its app yet.
///
/// Any HTTP client already cached in the isolate is dropped, so no
/// connection is made under an older policy. Entries are checked when the
/// policy is made ([`NetPolicy::allowing`]), so this does not fail today.
pub fn set_net_policy(
    state: &mut deno_core::OpState,
    net: &NetPolicy,
) -> Result<(), PermissionError> {
    let compiled = net.compiled();
    if let Some(options) = state.try_borrow_mut::<deno_fetch::Options>() {
        options.resolver = deno_fetch::dns::Resolver::custom(std::sync::Arc::new(
            permissions::PolicyResolver(compiled.clone()),
        ));
    }
    let _ = state.try_take::<deno_fetch::Client>();
    state.put(compiled.container.clone());
    state.put(compiled);
    Ok(())
}
