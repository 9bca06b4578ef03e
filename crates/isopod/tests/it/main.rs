//! isopod's integration tests: real `isopod` processes on ephemeral loopback
//! ports, driven by a real HTTP client. One test binary, one module per area.

mod admin;
mod bundles;
mod cli;
mod code_cache;
mod conformance;
mod errors;
mod fetch;
mod http_semantics;
mod hygiene;
mod isolation;
mod limits;
mod logging;
mod memory_budget;
mod platform;
mod probe;
mod serve;
mod snapshots;
mod ssrf;
mod storage;
mod streaming;
mod support;
