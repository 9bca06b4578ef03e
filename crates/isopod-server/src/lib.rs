//! isopod's HTTP front end.
//!
//! A [`Server`] runs on the pool's M worker threads (each a `current_thread`
//! tokio runtime with a `LocalSet`), each accepting connections on its own
//! `SO_REUSEPORT` sockets for the main address and for every app's own port
//! (from the config file, or given by an admin deploy while running).
//! A request is routed to an app by host and path (or by the port it came
//! in on), and served on the accepting thread when that thread has a warm
//! instance of the app or is its home thread; otherwise it is handed to the
//! app's home thread. HTTP/1.1 requests without a body are read and
//! answered by isopod's own path (`h1`), everything else by hyper.
//!
//! Invariants:
//! - Every app's bundle is evaluated in a scratch isolate before any thread
//!   starts serving it, so a broken bundle is refused up front with its
//!   `file:line:column`.
//! - The handler sees an absolute `request.url` built from the `Host` header
//!   (a request without one is answered 400), and no hop-by-hop headers.
//! - Request hygiene is enforced before any tenant code runs: a request
//!   head must arrive within 10 s and fit 32 KiB and 100 header lines (431
//!   otherwise), a body may not exceed the app's `max_request_body_mb` (413),
//!   and an app's concurrent requests are capped (queue, then 503).
//! - Every answer isopod gives itself (4xx, 503, 504) carries a one-line
//!   reason in a `text/plain` body.
//! - Every request to an app has an id, which the handler sees in
//!   `X-Request-Id`, the response carries, and every log record of the
//!   request names; the client's address and scheme are believed from
//!   forwarding headers only when a trusted proxy sent them (`edge`).
//! - With a registry (`isopod-store`), a version is recorded before it is
//!   served, so a restart serves what was served before it
//!   (`deployments`).
//!
//! Reading order: the modules import only modules above them in this list
//! (no cycle), so it can be read top down.
//! - `routing`: host and path patterns, the route table.
//! - `admission`: an app's cap on concurrent requests.
//! - `app_metrics`: each app's request counters, bounded in number.
//! - `manifest`: an app's settings as an operator writes them.
//! - `registry`: the deployed apps, and each thread's copy of them.
//! - `edge`: trusted proxies, the client's address and scheme, request ids.
//! - `access_log`: one record per request, written when its body is done.
//! - `listener`: binding `SO_REUSEPORT` sockets; what a listener's
//!   connections share (`ListenerContext`, `Http1Path`, `EdgeConfig`).
//! - `ports`: apps' own ports, bound and closed while the server runs.
//! - `deploy_check`: evaluating a bundle before anything serves it.
//! - `log_tail`: each app's recent log records and live followers.
//! - `periodic`, `date`, `head_deadline`, `response_deadline`: the
//!   per-thread sweeps (slow heads, late responses) and the cached `date`.
//! - `http_semantics`: request targets, `Host`, hop-by-hop headers.
//! - `service`: one request, from either HTTP stack to an instance and
//!   back (route, admission, dispatch, isopod's own answers).
//! - `h1`: isopod's own HTTP/1.1 path for bodiless requests.
//! - `connection`: one connection, and the stack that reads it.
//! - `accept`: the accept loops on every worker thread.
//! - `deployments`: recording a version and making it live (deploy,
//!   rollback, variables, removal).
//! - `metrics`: the admin API's Prometheus metrics.
//! - `admin`: the admin API.
//! - `server`: starting it all (`Server::start`).

mod accept;
mod access_log;
mod admin;
mod admin_storage;
mod admission;
mod app_metrics;
mod bindings;
mod connection;
mod date;
mod deploy_check;
mod deployments;
mod edge;
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod head_deadline;
mod http_semantics;
mod listener;
mod log_tail;
mod manifest;
mod metrics;
mod periodic;
mod ports;
mod registry;
mod response_deadline;
mod routing;
mod server;
mod service;
mod snapshots;

pub use access_log::AccessLog;
pub use admission::Admission;
pub use edge::TrustedProxies;
pub use isopod_pool::{ExecutionMode, PoolConfig};
pub use isopod_store::{Storage, StorageOptions, Store, StoreError, StoreOptions};
pub use listener::{EdgeConfig, Http1Path};
pub use log_tail::{LogTail, LogTailLayer};
pub use manifest::{
    check_app_name, AppManifest, AppSettings, D1BindingSpec, KvBackendName, KvBindingSpec,
    ManifestError, RouteSpec,
};
pub use ports::PortError;
pub use registry::{Deployed, Registry, Snapshot, VersionInfo};
pub use routing::{HostPattern, Route, RouteTable};
pub use server::{AdminConfig, Server, ServerConfig, ServerError, DEFAULT_METRICS_MAX_APPS};
