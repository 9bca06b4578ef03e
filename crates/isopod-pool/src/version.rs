//! App versions: what the pool keys instances on.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use isopod_runtime::{AppConfig, Bundle, NotSnapshottable, VersionSnapshot};
use sha2::{Digest, Sha256};

/// How an app's requests meet isolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionMode {
    /// Warm instances are reused; global state persists between requests in
    /// an instance, as on Workers.
    #[default]
    Pooled,
    /// A fresh isolate for each request, destroyed after it; nothing
    /// survives between requests.
    IsolatePerRequest,
}

/// A version's identity: the content hash of its bundle plus a deploy id, so
/// redeploying the same bytes is still a new version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionId {
    /// The first 16 hex digits of the bundle's SHA-256.
    pub hash: Arc<str>,
    /// Increases with every deploy in this process.
    pub deploy: u64,
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash, self.deploy)
    }
}

/// One deployed version of an app: everything needed to make instances.
#[derive(Debug)]
pub struct AppVersion {
    /// Name, variables, network policy.
    pub config: AppConfig,
    /// The code.
    pub bundle: Bundle,
    /// Pooled or isolate-per-request.
    pub mode: ExecutionMode,
    /// Identity.
    pub id: VersionId,
    /// The version's startup snapshot, or why it has none (then its
    /// instances load the bundle from source into a blank isolate); unset
    /// while it is being made.
    snapshot: OnceLock<Result<VersionSnapshot, NotSnapshottable>>,
    /// How busy this version is, across threads: the replica scheduler's
    /// input.
    pub(crate) load: VersionLoad,
}

/// Live load of one version, shared by every thread.
#[derive(Debug, Default)]
pub(crate) struct VersionLoad {
    /// Requests dispatched to this version's home-thread instance and not
    /// yet answered (queued in its driver or running).
    pub(crate) home_in_flight: AtomicUsize,
    /// The home instance's recent queue wait, in microseconds.
    pub(crate) home_queue_wait_us: AtomicU64,
    /// Replicas (instances off the home thread) alive now.
    pub(crate) replicas: AtomicUsize,
    /// When an instance of this version was last killed by a limit, as
    /// [`VersionLoad::now_ms`]; 0 when never. Until
    /// [`VersionLoad::QUARANTINE`] has passed since, the version is served
    /// on the pool's quarantine thread, and gets no replicas.
    pub(crate) last_kill_ms: AtomicU64,
}

impl VersionLoad {
    /// How long after its last kill a version stays in quarantine.
    pub(crate) const QUARANTINE: std::time::Duration = std::time::Duration::from_secs(10);

    /// Milliseconds on the process's monotonic clock (never 0).
    pub(crate) fn now_ms() -> u64 {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1
    }

    /// Notes a kill of one of the version's instances.
    pub(crate) fn killed(&self) {
        self.last_kill_ms.store(Self::now_ms(), Ordering::Relaxed);
    }

    /// Whether an instance was killed within [`Self::QUARANTINE`].
    pub(crate) fn quarantined(&self) -> bool {
        let last = self.last_kill_ms.load(Ordering::Relaxed);
        last != 0 && Self::now_ms().saturating_sub(last) < Self::QUARANTINE.as_millis() as u64
    }
}

impl AppVersion {
    /// A new version of `config.name` with a fresh deploy id.
    /// Its instances load the bundle from source until
    /// [`AppVersion::set_snapshot`] gives it a snapshot.
    pub fn new(config: AppConfig, bundle: Bundle, mode: ExecutionMode) -> Arc<AppVersion> {
        static NEXT_DEPLOY: AtomicU64 = AtomicU64::new(1);
        let digest = Sha256::digest(bundle.source().as_bytes());
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Arc::new(AppVersion {
            config,
            bundle,
            mode,
            id: VersionId {
                hash: hash.into(),
                deploy: NEXT_DEPLOY.fetch_add(1, Ordering::Relaxed),
            },
            snapshot: OnceLock::new(),
            load: VersionLoad::default(),
        })
    }

    /// The version's snapshot, or why it has none; `None` until one was
    /// made or refused.
    pub fn snapshot(&self) -> Option<&Result<VersionSnapshot, NotSnapshottable>> {
        self.snapshot.get()
    }

    /// Sets the outcome of making the version's snapshot, once (later calls
    /// are ignored and return false). Instances created afterwards may start
    /// from it; those alive are not touched.
    pub fn set_snapshot(&self, snapshot: Result<VersionSnapshot, NotSnapshottable>) -> bool {
        self.snapshot.set(snapshot).is_ok()
    }

    /// The app's name.
    pub fn app(&self) -> &str {
        &self.config.name
    }
}
