//! The instances of one worker thread.
//!
//! Invariants:
//! - Everything here is `!Send` and lives on one thread; instances are
//!   created and dropped on it.
//! - One pooled instance per app version per thread, created once however
//!   many requests miss at the same moment (they wait on the slot's lock).
//! - An instance with requests in flight is never destroyed: evicting or
//!   retiring it only drops its handle, and the instance's driver finishes
//!   its in-flight requests (streams and `waitUntil` included) before it
//!   drops the isolate.
//! - The global count of live instances is decremented only when an
//!   instance has really stopped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use isopod_runtime::{Graveyard, IncomingRequest, Instance, InstanceHandle, OutgoingResponse};
use rustc_hash::FxBuildHasher;

use crate::permits::LocalSemaphore;
use crate::stats::{InstanceRow, Shared};
use crate::version::{AppVersion, ExecutionMode};
use crate::PoolError;

/// A warm instance of one version on this thread.
struct Pooled {
    handle: InstanceHandle,
    created: Instant,
    served: Cell<u64>,
    /// When it last took a request: the LRU order for eviction, and a
    /// replica's idleness.
    last_used: Cell<Instant>,
    /// The version it runs.
    version: Arc<AppVersion>,
    /// Off its app's home thread: counted in the version's replicas.
    replica: bool,
    /// One permit per request the instance may work on at once.
    concurrency: LocalSemaphore,
    /// Gives the instance's place under the cap back once it stops.
    release: CapRelease,
    /// How it was started, for the first request it serves.
    start: StartTimes,
}

/// How long starting an instance took, in its two parts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StartTimes {
    /// Getting the isolate: a spare, a new blank one, or the version's
    /// snapshot restored (then ready, with no load).
    pub(crate) isolate: std::time::Duration,
    /// Loading the bundle into it: compile and top-level run (zero from a
    /// snapshot).
    pub(crate) load: std::time::Duration,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.replica {
            self.version.load.replicas.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A request counted on a pooled instance, from when it is taken there
/// until its response is ready: it bumps `served` and `last_used`, and on a
/// home instance holds a place in the version's in-flight count (replicas
/// are started by it), given back with the instance's queue wait as it is
/// then.
struct InstanceTurn(Rc<Pooled>);

impl InstanceTurn {
    fn begin(instance: Rc<Pooled>, received: Instant) -> InstanceTurn {
        instance.served.set(instance.served.get() + 1);
        // The LRU's order needs no fresh reading.
        instance.last_used.set(received);
        if !instance.replica {
            let load = &instance.version.load;
            load.home_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InstanceTurn(instance)
    }
}

impl Drop for InstanceTurn {
    fn drop(&mut self) {
        let instance = &self.0;
        if !instance.replica {
            let load = &instance.version.load;
            load.home_in_flight.fetch_sub(1, Ordering::Relaxed);
            let wait = instance.handle.queue_wait().as_micros() as u64;
            load.home_queue_wait_us.store(wait, Ordering::Relaxed);
        }
    }
}

/// A request being dispatched on this thread, counted in `active` while
/// it lives.
struct ActiveRequest(Rc<LocalPool>);

impl ActiveRequest {
    fn begin(pool: &Rc<LocalPool>) -> ActiveRequest {
        pool.active.set(pool.active.get() + 1);
        ActiveRequest(pool.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}

pin_project_lite::pin_project! {
    /// The future of a request [`LocalPool::dispatch_warm`] sent: its
    /// response.
    pub(crate) struct WarmDispatch<F> {
        #[pin]
        response: F,
        // Dropped after `response` (fields drop in order), as the async
        // path drops its guards after the dispatch it awaited.
        _held: WarmHold,
    }
}

impl<F> std::future::Future for WarmDispatch<F>
where
    F: std::future::Future<Output = Result<OutgoingResponse, isopod_runtime::DispatchError>>,
{
    type Output = Result<OutgoingResponse, PoolError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project()
            .response
            .poll(cx)
            .map(|outcome| outcome.map_err(PoolError::from))
    }
}

/// What a warm request holds until its response is ready, given back in the
/// async path's order: its permit (here), its turn on the instance, its
/// place in `active` (the fields, in order).
struct WarmHold {
    turn: InstanceTurn,
    _active: ActiveRequest,
}

impl Drop for WarmHold {
    fn drop(&mut self) {
        self.turn.0.concurrency.release();
    }
}

/// Where one version's instance lives on this thread.
struct Slot {
    version: Arc<AppVersion>,
    /// Held while the instance is being created, so a burst of misses makes
    /// one instance and the rest wait for it.
    creating: tokio::sync::Mutex<()>,
    instance: RefCell<Option<Rc<Pooled>>>,
}

/// A slot's key: its version's deploy id, unique in the process (a hash of
/// one integer per request, where name and content hash would cost two
/// string hashes and their reference counts).
type SlotKey = u64;

/// One worker thread's share of the pool.
pub(crate) struct LocalPool {
    thread: usize,
    shared: Arc<Shared>,
    /// Blank instances (snapshot loaded, no bundle), counted in the cap.
    spares: RefCell<Vec<Instance>>,
    /// Signalled when a spare is taken or evicted, so the refill waits for
    /// that instead of polling a full set.
    spare_gone: tokio::sync::Notify,
    /// Stopped instances, dropped by `reap` when the thread is idle.
    graveyard: Graveyard,
    spares_wanted: usize,
    /// Requests being dispatched on this thread right now.
    active: Cell<usize>,
    /// The home thread of an app.
    home_of: Box<dyn Fn(&str) -> usize>,
    /// Asks every other thread to evict an idle instance for memory: an
    /// answer per thread, as [`LocalPool::evict_for_memory`] gives it.
    evict_elsewhere: Box<dyn Fn() -> Vec<tokio::sync::oneshot::Receiver<Option<u64>>>>,
    replica_idle: std::time::Duration,
    max_concurrency: usize,
    /// What spares are made for: the process's default limits.
    spare_config: isopod_runtime::AppConfig,
    memory_budget: u64,
    /// The process is over its memory budget: misses are refused.
    over_budget: Cell<bool>,
    slots: RefCell<HashMap<SlotKey, Rc<Slot>, FxBuildHasher>>,
    /// The newest deploy seen per app; older versions' slots are retired.
    current: RefCell<HashMap<Arc<str>, u64, FxBuildHasher>>,
}

impl LocalPool {
    pub(crate) fn new(
        thread: usize,
        shared: Arc<Shared>,
        config: &crate::PoolConfig,
        home_of: Box<dyn Fn(&str) -> usize>,
        evict_elsewhere: Box<dyn Fn() -> Vec<tokio::sync::oneshot::Receiver<Option<u64>>>>,
    ) -> Rc<LocalPool> {
        let graveyard = Graveyard::counting_into(shared.releasing.clone());
        Rc::new(LocalPool {
            thread,
            shared,
            spares: RefCell::new(Vec::new()),
            spare_gone: tokio::sync::Notify::new(),
            graveyard,
            spares_wanted: config.spares_per_thread,
            active: Cell::new(0),
            home_of,
            evict_elsewhere,
            replica_idle: config.replica_idle,
            max_concurrency: config.max_concurrency.max(1),
            memory_budget: config.memory_budget,
            over_budget: Cell::new(false),
            spare_config: isopod_runtime::AppConfig {
                limits: config.limits.clone(),
                ..isopod_runtime::AppConfig::new("spare")
            },
            slots: RefCell::new(HashMap::default()),
            current: RefCell::new(HashMap::default()),
        })
    }

    /// Serves `request` at once when `version` has a warm pooled instance
    /// on this thread with a permit free, as nearly every request finds it:
    /// the request goes into the instance's queue now, and the returned
    /// future only waits for the response, holding what [`dispatch`]
    /// holds meanwhile. Otherwise the request comes back, for [`dispatch`].
    ///
    /// [`dispatch`]: LocalPool::dispatch
    // The request comes back by value, not boxed: the miss path it takes
    // then is the rarer one, and boxing would cost every hit an allocation.
    #[allow(clippy::result_large_err)]
    pub(crate) fn dispatch_warm(
        self: &Rc<Self>,
        version: &Arc<AppVersion>,
        request: IncomingRequest,
    ) -> Result<
        WarmDispatch<
            impl std::future::Future<
                    Output = Result<OutgoingResponse, isopod_runtime::DispatchError>,
                > + 'static,
        >,
        IncomingRequest,
    > {
        if version.mode != ExecutionMode::Pooled {
            return Err(request);
        }
        self.note_version(version);
        let warm = self
            .slots
            .borrow()
            .get(&version.id.deploy)
            .and_then(|slot| slot.open_instance());
        let Some(instance) = warm else {
            return Err(request);
        };
        if !instance.concurrency.try_acquire() {
            return Err(request);
        }
        self.shared.record_hit();
        let _active = ActiveRequest::begin(self);
        let turn = InstanceTurn::begin(instance, request.received);
        let response = turn.0.handle.dispatch(request);
        Ok(WarmDispatch {
            response,
            _held: WarmHold { turn, _active },
        })
    }

    /// Serves `request` with an instance of `version` on this thread.
    pub(crate) async fn dispatch(
        self: &Rc<Self>,
        version: Arc<AppVersion>,
        request: IncomingRequest,
    ) -> Result<OutgoingResponse, PoolError> {
        let _active = ActiveRequest::begin(self);
        self.note_version(&version);
        match version.mode {
            ExecutionMode::Pooled => {
                let arrived = request.received;
                let looking = Instant::now();
                let (instance, missed) = self.pooled_instance(&version).await?;
                let ready = Instant::now();
                let start = instance.start;
                let turn = InstanceTurn::begin(instance, request.received);
                // Held until the response is ready: past the cap, requests
                // wait here rather than pile into the isolate.
                let _slot = turn.0.concurrency.acquire().await;
                let response = turn.0.handle.dispatch(request).await?;
                if missed {
                    self.shared
                        .record_first_response(arrived, looking, ready, start);
                }
                Ok(response)
            }
            ExecutionMode::IsolatePerRequest => {
                self.shared.record_miss();
                let arrived = request.received;
                let looking = Instant::now();
                let (handle, _release, start) = Box::pin(self.create(&version)).await?;
                let ready = Instant::now();
                // The only handle goes with this request: once it completes,
                // the instance's driver stops and drops the isolate.
                let response = handle.dispatch(request).await?;
                self.shared
                    .record_first_response(arrived, looking, ready, start);
                Ok(response)
            }
        }
    }

    /// Whether this thread has a live pooled instance of `version`.
    pub(crate) fn has_warm(&self, version: &Arc<AppVersion>) -> bool {
        let key = version.id.deploy;
        self.slots
            .borrow()
            .get(&key)
            .is_some_and(|slot| slot.open_instance().is_some())
    }

    /// The live pooled instance of `version`: the warm one (a hit, with no
    /// wait), else one created now; and whether it was a miss.
    async fn pooled_instance(
        self: &Rc<Self>,
        version: &Arc<AppVersion>,
    ) -> Result<(Rc<Pooled>, bool), PoolError> {
        match self.slot(version).live_instance() {
            Some(instance) => {
                self.shared.record_hit();
                Ok((instance, false))
            }
            // Boxed: the miss path's future (the creation lock's wait, an
            // isolate's load) is kilobytes, and every warm request's future
            // would otherwise carry and move it.
            None => Box::pin(self.pooled_miss(version))
                .await
                .map(|instance| (instance, true)),
        }
    }

    /// Creates the pooled instance of `version`, or waits for the request
    /// already creating it.
    async fn pooled_miss(
        self: &Rc<Self>,
        version: &Arc<AppVersion>,
    ) -> Result<Rc<Pooled>, PoolError> {
        self.fill_slot_counting(version, true).await
    }

    /// The slot's instance, made now unless another task made it first.
    async fn fill_slot(
        self: &Rc<Self>,
        version: &Arc<AppVersion>,
    ) -> Result<Rc<Pooled>, PoolError> {
        self.fill_slot_counting(version, false).await
    }

    async fn fill_slot_counting(
        self: &Rc<Self>,
        version: &Arc<AppVersion>,
        counted: bool,
    ) -> Result<Rc<Pooled>, PoolError> {
        let slot = self.slot(version);
        let _creating = slot.creating.lock().await;
        if let Some(instance) = slot.live_instance() {
            // Another request (or the deploy's warm-up) created it while
            // this one waited.
            if counted {
                self.shared.record_hit();
            }
            return Ok(instance);
        }
        if counted {
            self.shared.record_miss();
        }
        let (handle, release, start) = self.create(version).await?;
        let replica = (self.home_of)(version.app()) != self.thread;
        if replica {
            version.load.replicas.fetch_add(1, Ordering::Relaxed);
            tracing::info!(app = %version.app(), version = %version.id, thread = self.thread, "started a replica");
        }
        let instance = Rc::new(Pooled {
            handle,
            created: Instant::now(),
            served: Cell::new(0),
            last_used: Cell::new(Instant::now()),
            version: version.clone(),
            replica,
            concurrency: LocalSemaphore::new(self.max_concurrency),
            release,
            start,
        });
        *slot.instance.borrow_mut() = Some(instance.clone());
        Ok(instance)
    }

    fn slot(&self, version: &Arc<AppVersion>) -> Rc<Slot> {
        let key = version.id.deploy;
        self.slots
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                Rc::new(Slot {
                    version: version.clone(),
                    creating: tokio::sync::Mutex::new(()),
                    instance: RefCell::new(None),
                })
            })
            .clone()
    }

    /// Starts an instance of `version`: from its snapshot when it has one
    /// (it keeps one only when restoring it beats loading the bundle;
    /// isopod-server decides at deploy), else by loading its bundle into a
    /// spare or, making room under the global cap, into a new blank
    /// instance.
    async fn create(
        self: &Rc<Self>,
        version: &Arc<AppVersion>,
    ) -> Result<(InstanceHandle, CapRelease, StartTimes), PoolError> {
        let _reserved = self.make_room_in_memory().await?;
        let started = Instant::now();
        let spare_fits = version
            .config
            .limits
            .same_isolate_shape(&self.spare_config.limits);
        let snapshot = match version.snapshot() {
            Some(Ok(snapshot)) => Some(snapshot),
            _ => None,
        };
        let spare = (spare_fits && snapshot.is_none())
            .then(|| self.take_spare())
            .flatten();
        let blank = match spare {
            Some(spare) => Ok(spare),
            None => {
                while !self.shared.try_reserve() {
                    // The victim stops (and leaves the cap) once its driver
                    // notices its handle is gone.
                    match self.evict_one() {
                        Some(stopped) => stopped.await,
                        None => return Err(PoolError::AtCapacity),
                    }
                }
                match snapshot {
                    Some(snapshot) => {
                        let instance =
                            Instance::from_snapshot(snapshot, &version.bundle, &version.config);
                        self.shared
                            .record_snapshot_start(started.elapsed(), instance.is_ok());
                        instance
                    }
                    None => self.new_blank(&version.config),
                }
            }
        };
        let mut start = StartTimes::default();
        let created = async {
            let mut instance = blank?;
            let loading = Instant::now();
            start.isolate = loading - started;
            instance.set_version(version.id.to_string());
            let shared = self.shared.clone();
            let killed = version.clone();
            instance.set_kill_sink(Rc::new(move |event| {
                killed.load.killed();
                shared.record_kill(event)
            }));
            // From a snapshot the instance is ready: its top-level code ran
            // when the snapshot was made.
            if snapshot.is_none() {
                instance.load(&version.bundle, &version.config).await?;
                start.load = loading.elapsed();
            }
            Ok::<_, isopod_runtime::InstanceError>(
                instance.spawn_with_graveyard(self.graveyard.clone()),
            )
        }
        .await;
        match created {
            Ok(handle) => {
                self.shared.record_cold_start(started.elapsed());
                let release = CapRelease::new(self.shared.clone(), handle.stopped());
                let watcher = release.clone();
                tokio::task::spawn_local(async move { watcher.when_stopped().await });
                Ok((handle, release, start))
            }
            Err(error) => {
                self.shared.release();
                Err(PoolError::Instance(error))
            }
        }
    }

    /// A spare, if this thread has one (any spare fits any app: loading
    /// sets the app's name, policy and variables).
    fn take_spare(&self) -> Option<Instance> {
        let spare = self.spares.borrow_mut().pop()?;
        self.shared.spares_changed(false);
        self.spare_gone.notify_one();
        Some(spare)
    }

    fn new_blank(
        &self,
        config: &isopod_runtime::AppConfig,
    ) -> Result<Instance, isopod_runtime::InstanceError> {
        let started = Instant::now();
        let blank = Instance::blank(config);
        self.shared.record_blank_creation(started.elapsed());
        blank
    }

    /// Keeps `spares_wanted` blank instances ready. Runs for the thread's
    /// life; creates one at a time, only while no request is being
    /// dispatched on this thread, at most one per `SPARE_REFILL_INTERVAL`,
    /// and only under the cap. With the set full it sleeps until a spare is
    /// taken or evicted, so an idle thread is not woken for it.
    pub(crate) async fn refill_spares(self: Rc<Self>) {
        const SPARE_REFILL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);
        loop {
            if self.spares.borrow().len() >= self.spares_wanted {
                self.spare_gone.notified().await;
            }
            tokio::time::sleep(SPARE_REFILL_INTERVAL).await;
            if self.active.get() > 0 || self.spares.borrow().len() >= self.spares_wanted {
                continue;
            }
            if !self.shared.try_reserve() {
                continue;
            }
            match self.new_blank(&self.spare_config) {
                Ok(spare) => {
                    self.spares.borrow_mut().push(spare);
                    self.shared.spares_changed(true);
                }
                Err(error) => {
                    self.shared.release();
                    tracing::error!(%error, "could not create a spare instance");
                }
            }
        }
    }

    /// Drops stopped instances while no request is being dispatched on this
    /// thread (teardown costs milliseconds, never on a request's path), or
    /// regardless once too many have piled up. Runs for the thread's life,
    /// asleep while the graveyard is empty.
    pub(crate) async fn reap(self: Rc<Self>) {
        const MAX_UNREAPED: usize = 8;
        loop {
            self.graveyard.occupied().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            while (self.active.get() == 0 || self.graveyard.len() > MAX_UNREAPED)
                && self.graveyard.reap_one()
            {
                self.shared.record_teardowns(1);
                // One at a time: requests that arrive meanwhile go first.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Before a miss makes an instance: while the process is past 90 % of
    /// its memory budget, evicts the least recently used idle instance (or
    /// a spare) of this thread, or else of the others, and drops it now,
    /// not at that thread's next idle moment, so that the miss can be
    /// served. Memory that stopped instances still hold, on any thread,
    /// counts as released (it is on its way back), and so does what these
    /// evictions dropped, whether or not the allocator has handed it back to
    /// the system yet: one slow teardown does not make misses refuse.
    /// Refused only when the process is over the budget itself and no
    /// thread has anything idle left.
    ///
    /// The room made includes what the new instance will typically hold,
    /// and misses making instances at the same time count what they
    /// reserved: two at once do not both take the last room. The returned
    /// reservation is held while the instance is made.
    async fn make_room_in_memory(&self) -> Result<MemoryReservation, PoolError> {
        let high_water = self.memory_budget / 10 * 9;
        let wanted = self.shared.releasing.typical_instance_bytes();
        let reserve = || MemoryReservation::new(self.shared.clone(), wanted);
        let Some(rss_before) = crate::memory::resident_bytes() else {
            return Ok(reserve());
        };
        let mut dropped = 0u64;
        loop {
            let rss = crate::memory::resident_bytes()
                .unwrap_or(rss_before)
                .min(rss_before.saturating_sub(dropped));
            let held = rss.saturating_sub(self.shared.releasing.bytes())
                + self.shared.creating.load(Ordering::Acquire);
            if held + wanted <= high_water {
                return Ok(reserve());
            }
            let freed = match self.evict_for_memory().await {
                Some(freed) => Some(freed),
                None => {
                    let mut freed = None;
                    for answer in (self.evict_elsewhere)() {
                        if let Some(bytes) = answer.await.ok().flatten() {
                            freed = Some(freed.unwrap_or(0) + bytes);
                        }
                    }
                    freed
                }
            };
            let Some(freed) = freed else {
                if held <= self.memory_budget {
                    return Ok(reserve());
                }
                tracing::warn!(
                    rss_mib = rss >> 20,
                    budget_mib = self.memory_budget >> 20,
                    thread = self.thread,
                    "over the memory budget and no idle instance is left to evict: a new instance is refused"
                );
                return Err(PoolError::OverMemoryBudget);
            };
            dropped += freed;
        }
    }

    /// Evicts this thread's least recently used idle instance (or a spare)
    /// for memory and drops it now, with anything else stopped here; the
    /// bytes the dropped instances were counted for, or `None` when there
    /// was nothing idle to evict.
    pub(crate) async fn evict_for_memory(&self) -> Option<u64> {
        let stopped = self.evict_one()?;
        stopped.await;
        let (reaped, bytes) = self.graveyard.reap_all();
        self.shared.record_teardowns(reaped);
        crate::memory::return_freed_memory();
        Some(bytes)
    }

    /// Watches the process's resident memory against its budget: past 90 %
    /// it evicts this thread's idle instances and spares, one per check,
    /// least recently used first; past the budget it refuses misses until
    /// memory is back under it. Runs for the thread's life.
    pub(crate) async fn watch_memory(self: Rc<Self>) {
        const CHECK: std::time::Duration = std::time::Duration::from_millis(100);
        let high_water = self.memory_budget / 10 * 9;
        loop {
            tokio::time::sleep(CHECK).await;
            let Some(rss) = crate::memory::resident_bytes() else {
                continue;
            };
            let over = rss > self.memory_budget;
            if over != self.over_budget.replace(over) {
                if over {
                    tracing::warn!(
                        rss_mib = rss >> 20,
                        budget_mib = self.memory_budget >> 20,
                        thread = self.thread,
                        "over the memory budget: refusing new instances"
                    );
                } else {
                    tracing::info!(
                        rss_mib = rss >> 20,
                        thread = self.thread,
                        "back under the memory budget"
                    );
                }
            }
            if rss > high_water {
                if let Some(stopped) = self.evict_one() {
                    stopped.await;
                }
            }
        }
    }

    /// Retires replicas that have been idle for `replica_idle`. Runs for the
    /// thread's life.
    pub(crate) async fn retire_idle_replicas(self: Rc<Self>) {
        let period = (self.replica_idle / 4).max(std::time::Duration::from_millis(10));
        loop {
            tokio::time::sleep(period).await;
            for slot in self.slots.borrow().values() {
                let mut instance = slot.instance.borrow_mut();
                let idle = instance.as_ref().is_some_and(|i| {
                    i.replica
                        && i.handle.in_flight() == 0
                        && i.last_used.get().elapsed() >= self.replica_idle
                });
                if idle {
                    instance.take();
                    tracing::info!(app = %slot.version.app(), thread = self.thread, "retired an idle replica");
                }
            }
        }
    }

    /// Drops the least recently used idle instance on this thread (or a
    /// spare); returns a future that resolves once it has left the cap, or
    /// `None` when there is nothing to evict.
    fn evict_one(&self) -> Option<futures::future::LocalBoxFuture<'static, ()>> {
        let victim = self
            .slots
            .borrow()
            .values()
            .filter(|slot| {
                slot.instance
                    .borrow()
                    .as_ref()
                    .is_some_and(|i| i.handle.in_flight() == 0)
            })
            .min_by_key(|slot| slot.instance.borrow().as_ref().map(|i| i.last_used.get()))
            .cloned();
        let Some(victim) = victim else {
            // No idle instance: give up a spare instead, if there is one.
            let spare = self.spares.borrow_mut().pop()?;
            drop(spare);
            self.shared.spares_changed(false);
            self.spare_gone.notify_one();
            self.shared.release();
            return Some(Box::pin(std::future::ready(())));
        };
        let evicted = victim.instance.borrow_mut().take();
        let stopped = evicted.map(|pooled| pooled.release.clone());
        self.shared.record_eviction();
        tracing::debug!(app = %victim.version.app(), version = %victim.version.id, thread = self.thread, "evicted an idle instance");
        Some(Box::pin(async move {
            if let Some(release) = stopped {
                release.when_stopped().await;
            }
        }))
    }

    /// A newer deploy of an app retires the slots of its older versions:
    /// their handles go, and their instances stop once their in-flight
    /// requests are done.
    /// Returns whether `version` is the newest this thread has seen of its
    /// app.
    pub(crate) fn note_version(&self, version: &Arc<AppVersion>) -> bool {
        let newer = {
            let mut current = self.current.borrow_mut();
            match current.get_mut(version.app()) {
                Some(seen) if *seen >= version.id.deploy => false,
                Some(seen) => {
                    *seen = version.id.deploy;
                    true
                }
                None => {
                    current.insert(version.config.name.clone(), version.id.deploy);
                    true
                }
            }
        };
        if newer {
            self.slots.borrow_mut().retain(|&deploy, slot| {
                slot.version.app() != version.app() || deploy >= version.id.deploy
            });
        }
        newer
    }

    /// Makes `version`'s pooled instance on this thread unless it has one
    /// (a deploy's warm-up: neither a hit nor a miss). A failure is logged;
    /// the first request will try again and report it.
    pub(crate) async fn warm(self: &Rc<Self>, version: &Arc<AppVersion>) {
        if let Err(error) = self.fill_slot(version).await {
            tracing::warn!(app = %version.app(), version = %version.id, %error, "warming the new version failed");
        }
    }

    /// Drops every slot of `app`; its instances finish their in-flight
    /// requests and stop.
    pub(crate) fn remove_app(&self, app: &str) {
        self.slots
            .borrow_mut()
            .retain(|_, slot| slot.version.app() != app);
        self.current.borrow_mut().remove(app);
    }

    /// This thread's live instances, for the stats.
    pub(crate) fn rows(&self) -> Vec<InstanceRow> {
        self.slots
            .borrow()
            .values()
            .filter_map(|slot| {
                let instance = slot.open_instance()?;
                Some(InstanceRow {
                    replica: instance.replica,
                    app: slot.version.app().to_string(),
                    version: slot.version.id.to_string(),
                    thread: self.thread,
                    age_ms: instance.created.elapsed().as_millis() as u64,
                    requests_served: instance.served.get(),
                    in_flight: instance.handle.in_flight(),
                    heap_used_bytes: instance.handle.heap_used(),
                })
            })
            .collect()
    }
}

impl Slot {
    /// The slot's instance unless it has stopped (killed by a limit, or its
    /// event loop failed): a stopped one stays in the slot until the next
    /// request clears it, but is gone for every other purpose.
    fn open_instance(&self) -> Option<Rc<Pooled>> {
        self.instance
            .borrow()
            .clone()
            .filter(|instance| !instance.handle.is_closed())
    }

    /// The open instance, clearing a stopped one so the next request gets a
    /// new one.
    fn live_instance(&self) -> Option<Rc<Pooled>> {
        let open = self.open_instance();
        if open.is_none() {
            *self.instance.borrow_mut() = None;
        }
        open
    }
}

/// An instance's place under the cap, given back exactly once when the
/// instance stops, by whichever waiter sees the stop first: its watcher
/// task, or a miss that evicted it and waits to take the place.
#[derive(Clone)]
struct CapRelease {
    shared: Arc<Shared>,
    stopped: futures::future::Shared<futures::future::BoxFuture<'static, ()>>,
    released: Rc<Cell<bool>>,
}

impl CapRelease {
    fn new(
        shared: Arc<Shared>,
        stopped: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> CapRelease {
        use futures::FutureExt as _;
        CapRelease {
            shared,
            stopped: stopped.boxed().shared(),
            released: Rc::new(Cell::new(false)),
        }
    }

    async fn when_stopped(self) {
        self.stopped.clone().await;
        if !self.released.replace(true) {
            self.shared.release();
        }
    }
}

/// Memory a miss reserved under the budget for the instance it makes,
/// given back when the instance is made (its memory is then resident, and
/// counted as such) or its making failed.
struct MemoryReservation {
    shared: Arc<Shared>,
    bytes: u64,
}

impl MemoryReservation {
    fn new(shared: Arc<Shared>, bytes: u64) -> MemoryReservation {
        shared.creating.fetch_add(bytes, Ordering::AcqRel);
        MemoryReservation { shared, bytes }
    }
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        self.shared.creating.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}
