//! Per-version startup snapshots.
//!
//! When a version is deployed, its top-level code runs once in a
//! snapshotting isolate (started from isopod's API snapshot) and the heap it
//! leaves is written out as a V8 startup snapshot of its own. An instance of
//! the version is then created from that snapshot ([`crate::Instance::from_snapshot`]):
//! no compile and no top-level run, and the functions the top-level code
//! compiled come with it.
//!
//! What cannot go into a snapshot, and is detected so that the version is
//! loaded from source instead ([`NotSnapshottable`]):
//! - work still pending when top-level code ends (a timer, an outbound
//!   fetch, a top-level `await` that has not settled): a snapshot holds a
//!   heap, not the host's timers and sockets;
//! - values every instance would then share: `Math.random()`,
//!   `crypto.getRandomValues()`, `crypto.randomUUID()`, any
//!   `crypto.subtle` call and the clock read at top level;
//! - state that lives outside the heap: a host resource (a stream,
//!   compression, a socket), a `Blob`'s bytes, a WebAssembly module, a
//!   `FinalizationRegistry`.
//!
//! Math.random's state is not part of a snapshot (V8 reseeds it in each
//! isolate), so instances of one snapshot do not repeat each other's
//! sequences.
//!
//! Invariants: a version's snapshot is layered on isopod's API snapshot and
//! made in the process that serves it (`snapshotter.rs` says why, and how a
//! process of its own checks each one first, so that a tenant's heap or
//! top-level code that crashes V8 costs that process only). A snapshot is
//! used only by the build that made it ([`build_key`]).
//!
//! Relies on deno_core 0.413 letting a snapshotting runtime start in a
//! process whose V8 is already set up for serving (its check of that is
//! inert), and on the layout of its snapshot sidecar (`sidecar.rs`).

mod make;
mod sidecar;
mod snapshotter;

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

pub use snapshotter::{serve_snapshot_request, Snapshotter};

/// A version's startup snapshot: the bytes V8 deserialises into each new
/// instance. Clones share them; they live as long as the last instance made
/// from them.
#[derive(Clone)]
pub struct VersionSnapshot {
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for VersionSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionSnapshot")
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl VersionSnapshot {
    /// Bytes kept from an earlier [`Snapshotter::make`] of this same build
    /// (the caller checks [`build_key`]; V8 does not check them).
    pub fn from_bytes(bytes: Arc<[u8]>) -> VersionSnapshot {
        VersionSnapshot { bytes }
    }

    /// The serialised snapshot.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty (never, for one that was made).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Why a version has no snapshot and is loaded from source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotSnapshottable {
    /// Its top-level code did something a snapshot cannot hold or must not
    /// share (each entry names one).
    #[error("its top-level code used {}", .0.join(", "))]
    Tainted(Vec<String>),
    /// The snapshotting process failed (the bundle threw there, a limit
    /// stopped it, or the process crashed).
    #[error("making its snapshot failed: {0}")]
    Failed(String),
    /// Snapshots are switched off for this version or this process.
    #[error("snapshots are off")]
    Off,
    /// Loading the bundle from source is quicker than starting from a
    /// snapshot (which costs deserialising at least isopod's own 2 MB).
    #[error("loading it from source ({load_ms:.1} ms) is quicker than starting from a snapshot (about {restore_ms:.1} ms)")]
    NotWorthIt {
        /// The bundle's first load, compile and top-level run.
        load_ms: f64,
        /// What restoring the snapshot is expected to cost.
        restore_ms: f64,
    },
}

/// What starting an instance from a snapshot of `bytes` bytes is expected
/// to cost: V8 deserialises about 2.5 ns per byte on this project's
/// machines (6.6 ms for 2.2 MB, 11 ms for 5 MB; docs/performance.md), plus
/// a millisecond of isolate set-up.
pub fn expected_restore_time(bytes: usize) -> std::time::Duration {
    std::time::Duration::from_micros(1000 + (bytes as u64).saturating_mul(5) / 2000)
}

/// Identifies this build's API snapshot, V8 and V8 flags: a version's
/// snapshot is used only by a process with the same key (a snapshot made
/// over another API snapshot would not deserialise).
pub fn build_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        crate::snapshot::SNAPSHOT.hash(&mut hasher);
        deno_core::v8::V8::get_version().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    })
}

#[cfg(test)]
mod tests;
