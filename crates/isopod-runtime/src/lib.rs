//! One V8 isolate running one isopod bundle.
//!
//! This crate is the `io/` half of isopod (in workerd's sense): the startup
//! snapshot, the instance lifecycle (create, load a bundle, serve, drop), and
//! the path of a request into and out of an isolate. The JavaScript surface
//! itself lives in `isopod-api`.
//!
//! Invariants, which every type here keeps:
//! - An [`Instance`] is `!Send`: created on a thread, it lives and dies there.
//!   Several instances may share a thread.
//! - Every synchronous piece of V8 work runs inside one window (enter, hooks,
//!   work, hooks, exit); no V8 handle or scope lives across an `.await`.
//! - Instances on one thread may be dropped in any order.
//! - What crosses threads ([`IncomingRequest`], [`OutgoingResponse`]) is
//!   `Send`; what touches V8 is not, and neither is an [`InstanceHandle`]:
//!   a request reaches an instance on its own thread, over channels without
//!   atomics (another thread hands it over through the pool first).
#![deny(missing_docs)]

mod body;
mod bundle;
mod cpu_clock;
mod crypto_pool;
mod enforcer;
mod graveyard;
mod instance;
mod instance_host;
mod limits;
mod loader;
mod local_channel;
mod memory;
mod platform;
mod recycle;
mod request;
mod scheduling;
mod shared_source;
mod snapshot;
pub mod version_snapshot;
mod watchdog;
mod window;

pub use body::{BoxError, RequestBody, ResponseBody};
pub use bundle::{code_cache_counts, Bundle, BundleError, CodeCacheCounts};
pub use cpu_clock::{cpu_clock_read_cost, cpu_clock_reads, thread_cpu_time};
pub use graveyard::{Graveyard, Releasing};
pub use instance::{AppConfig, Instance, InstanceError, InstanceHandle, KillSink, SnapshotPolicy};
pub use isopod_api::{deny_own_listeners, FetchCounts, FetchOutcome, NetPolicy, PermissionError};
pub use limits::{KillEvent, KillReason, LimitOverrides, Limits, LimitsError};
pub use platform::{init_v8, init_v8_with, V8Settings};
pub use recycle::{buffer, recycle_header_map};
pub use request::{DispatchError, HeaderList, IncomingRequest, OutgoingResponse, ResponseReport};
pub use scheduling::lower_thread_priority;
pub use snapshot::snapshot_size;
pub use version_snapshot::{NotSnapshottable, Snapshotter, VersionSnapshot};
pub use window::{WindowHooks, WindowKind};
