//! Version snapshots on the server's side: made for each version before it
//! goes live, kept in the registry beside the bundle, and found there again
//! after a restart.
//!
//! Invariants: a version goes live with its snapshot's outcome already set
//! (made, or why not), so its first instance never waits for one; versions
//! that come back from the registry at start go live at once, from source,
//! and get their snapshot from a background thread (from the registry when
//! it has one for this build, made otherwise). A snapshot that cannot be
//! made only costs speed: the version is served from source. Versions with
//! the same cache key (the same bundle, variables and build: one app
//! deployed again, or one bundle under many names) share one snapshot in
//! memory while any of them is live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use isopod_pool::AppVersion;
use isopod_runtime::{
    AppConfig, Bundle, NotSnapshottable, SnapshotPolicy, Snapshotter, VersionSnapshot,
};
use isopod_store::{sha256_hex, Store};

/// How long after a start the background thread waits before giving the
/// versions back from the registry their snapshots.
const FILL_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Where snapshots come from and go.
pub(crate) struct Snapshots {
    /// `None` when snapshots are off.
    snapshotter: Option<Snapshotter>,
    store: Option<Arc<Store>>,
    /// The snapshots live versions hold, by cache key.
    live: Mutex<HashMap<String, Weak<[u8]>>>,
}

/// Why a snapshot restoring in `restore` is not worth having for
/// `bundle`, if its first load was quicker.
fn not_worth_it(bundle: &Bundle, restore: std::time::Duration) -> Option<NotSnapshottable> {
    let load = bundle.first_load_time()?;
    (load <= restore).then_some(NotSnapshottable::NotWorthIt {
        load_ms: load.as_secs_f64() * 1e3,
        restore_ms: restore.as_secs_f64() * 1e3,
    })
}

/// A version's snapshot, or why it has none.
pub(crate) struct Prepared {
    pub(crate) outcome: Result<VersionSnapshot, NotSnapshottable>,
    /// Made now (not found in the registry).
    pub(crate) fresh: bool,
}

/// What one snapshot depends on, as the registry's cache key: the bundle,
/// the variables (a service-worker script's top-level code sees them as
/// globals; a module's snapshot does not hold them, but whether a bundle is
/// a module is not known before its first load, and the key must not
/// change with that), and the build that makes and reads it.
fn cache_key(bundle: &Bundle, config: &AppConfig) -> String {
    let globals = serde_json::to_string(&(&config.vars, config.snapshot)).unwrap_or_default();
    format!(
        "{}:{}:{}",
        sha256_hex(bundle.source().as_bytes()),
        &sha256_hex(globals.as_bytes())[..16],
        isopod_runtime::version_snapshot::build_key()
    )
}

impl Snapshots {
    pub(crate) fn new(snapshotter: Option<Snapshotter>, store: Option<Arc<Store>>) -> Snapshots {
        Snapshots {
            snapshotter,
            store,
            live: Mutex::default(),
        }
    }

    /// How many distinct snapshots live versions hold, and their bytes.
    pub(crate) fn held(&self) -> (usize, usize) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.values()
            .filter_map(Weak::upgrade)
            .fold((0, 0), |(count, bytes), held| {
                (count + 1, bytes + held.len())
            })
    }

    /// The snapshot a live version already holds for `key`.
    fn live(&self, key: &str) -> Option<VersionSnapshot> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = live.get(key)?.upgrade()?;
        Some(VersionSnapshot::from_bytes(bytes))
    }

    /// Shares `bytes` under `key` with later versions (or the bytes already
    /// shared there, the same snapshot), dropping keys no version holds.
    fn share(&self, key: String, bytes: Arc<[u8]>) -> VersionSnapshot {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, held| held.strong_count() > 0);
        let shared = match live.get(&key).and_then(Weak::upgrade) {
            Some(held) => held,
            None => {
                live.insert(key, Arc::downgrade(&bytes));
                bytes
            }
        };
        VersionSnapshot::from_bytes(shared)
    }

    /// The registry snapshots are kept in, if the server keeps one.
    pub(crate) fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// The snapshot for a version of `bundle` run as `config`: from the
    /// registry if it holds one, made otherwise (then `fresh`, to be kept
    /// with [`Snapshots::keep`] once the version is recorded).
    pub(crate) async fn prepare(&self, bundle: &Bundle, config: &AppConfig) -> Prepared {
        let snapshotter = match (&self.snapshotter, config.snapshot) {
            (_, SnapshotPolicy::Off) => None,
            (snapshotter, _) => snapshotter.as_ref(),
        };
        let Some(snapshotter) = snapshotter else {
            return Prepared {
                outcome: Err(NotSnapshottable::Off),
                fresh: false,
            };
        };
        let key = cache_key(bundle, config);
        if let Some(shared) = self.live(&key) {
            return Prepared {
                outcome: Ok(shared),
                fresh: false,
            };
        }
        // The registry keeps only snapshots that paid when they were made.
        if let Some(store) = &self.store {
            let (store, lookup) = (store.clone(), key.clone());
            if let Ok(Ok(Some(bytes))) =
                tokio::task::spawn_blocking(move || store.snapshot(&lookup)).await
            {
                return Prepared {
                    outcome: Ok(self.share(key, bytes.into())),
                    fresh: false,
                };
            }
        }
        // A snapshot that would start instances slower than loading the
        // bundle is not made (nor kept: its bytes would cost memory). A
        // bundle back from the registry was never loaded here: one load in
        // a scratch isolate says.
        if bundle.first_load_time().is_none() {
            let (scratch_bundle, scratch_config) = (bundle.clone(), config.clone());
            let _ = tokio::task::spawn_blocking(move || {
                crate::deploy_check::check_bundle(&scratch_config, &scratch_bundle)
            })
            .await;
        }
        let base = isopod_runtime::version_snapshot::expected_restore_time(
            isopod_runtime::snapshot_size(),
        );
        if let Some(refused) = not_worth_it(bundle, base) {
            return Prepared {
                outcome: Err(refused),
                fresh: false,
            };
        }
        let started = std::time::Instant::now();
        let made = snapshotter.make(bundle, config).await.and_then(|snapshot| {
            let restore = isopod_runtime::version_snapshot::expected_restore_time(snapshot.len());
            match not_worth_it(bundle, restore) {
                Some(refused) => Err(refused),
                None => Ok(snapshot),
            }
        });
        let made = made.map(|snapshot| self.share(key, snapshot.bytes().clone()));
        match &made {
            Ok(snapshot) => tracing::info!(
                app = %config.name,
                bytes = snapshot.len(),
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "made the version's snapshot"
            ),
            Err(why) => {
                tracing::info!(app = %config.name, %why, "the version has no snapshot; its instances load it from source")
            }
        }
        Prepared {
            outcome: made,
            fresh: true,
        }
    }

    /// Keeps a made snapshot in the registry (once the version, and so its
    /// bundle, is recorded there). A failure only costs a remake later.
    pub(crate) async fn keep(&self, version: &AppVersion) {
        let (Some(store), Some(Ok(snapshot))) = (&self.store, version.snapshot()) else {
            return;
        };
        let key = cache_key(&version.bundle, &version.config);
        let sha = sha256_hex(version.bundle.source().as_bytes());
        let (store, bytes) = (store.clone(), snapshot.bytes().clone());
        let kept =
            tokio::task::spawn_blocking(move || store.put_snapshot(&key, &sha, &bytes)).await;
        if let Ok(Err(error)) = kept {
            tracing::warn!(app = %version.app(), %error, "could not keep the version's snapshot");
        }
    }

    /// Gives each of `versions` (live already, from source) its snapshot,
    /// one after another on a thread of its own.
    pub(crate) fn fill_in_background(self: Arc<Self>, versions: Vec<Arc<AppVersion>>) {
        if self.snapshotter.is_none() || versions.is_empty() {
            for version in &versions {
                version.set_snapshot(Err(NotSnapshottable::Off));
            }
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("isopod-snapshots".into())
            .spawn(move || {
                // Serving threads go first; the threads this one starts
                // (its blocking pool) inherit the lower priority.
                isopod_runtime::lower_thread_priority();
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async {
                    // The first requests after a start do not share the
                    // cores with this work.
                    tokio::time::sleep(FILL_DELAY).await;
                    for version in versions {
                        let prepared = self.prepare(&version.bundle, &version.config).await;
                        let ready = prepared.outcome.is_ok();
                        if version.set_snapshot(prepared.outcome) {
                            if ready {
                                tracing::info!(
                                    app = %version.app(),
                                    version = %version.id,
                                    from = if prepared.fresh { "made" } else { "registry" },
                                    "the version's snapshot is ready"
                                );
                            }
                            if prepared.fresh {
                                self.keep(&version).await;
                            }
                        }
                    }
                });
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the snapshot thread; versions load from source");
        }
    }
}
