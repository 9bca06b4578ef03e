//! isopod's HTTP front end.
//!
//! A [`Server`] runs M worker threads, each a `current_thread` tokio runtime
//! with a `LocalSet`, each accepting connections on its own `SO_REUSEPORT`
//! socket bound to the same address, and each owning instances of the apps
//! it serves. A connection is accepted, parsed and answered on one thread,
//! and its requests go to an instance on that same thread: no request hops
//! between threads.
//!
//! Invariants:
//! - Every app's bundle is evaluated in a scratch isolate before any thread
//!   starts serving it, so a broken bundle is refused up front with its
//!   `file:line:column`.
//! - The handler sees an absolute `request.url` built from the `Host` header
//!   (a request without one is answered 400), and no hop-by-hop headers.
#![deny(missing_docs)]

mod http_semantics;
mod listener;
mod server;
mod service;

pub use server::{AppSpec, Server, ServerConfig, ServerError};
