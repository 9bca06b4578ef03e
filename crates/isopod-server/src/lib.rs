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
#![deny(missing_docs)]

mod admin;
mod admission;
mod connection;
mod h1;
mod head_deadline;
mod http_semantics;
mod listener;
mod manifest;
mod periodic;
mod ports;
mod registry;
mod response_deadline;
mod routing;
mod server;
mod service;

pub use admission::Admission;
pub use connection::Http1Path;
pub use isopod_pool::{ExecutionMode, PoolConfig};
pub use manifest::{check_app_name, AppSettings, ManifestError, RouteSpec};
pub use ports::PortError;
pub use registry::{Deployed, Registry, Snapshot};
pub use routing::{HostPattern, Route, RouteTable};
pub use server::{AdminConfig, AppManifest, Server, ServerConfig, ServerError};
