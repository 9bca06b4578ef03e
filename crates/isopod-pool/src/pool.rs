//! The pool: worker threads, and the way requests reach them.

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use futures::future::{Either, LocalBoxFuture};

use isopod_runtime::{IncomingRequest, OutgoingResponse};
use tokio::sync::{mpsc, oneshot};

use crate::local::LocalPool;
use crate::stats::{InstanceRow, PoolStats, Shared};
use crate::version::AppVersion;
use crate::PoolError;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads; default one per core. The pool runs one more, the
    /// quarantine thread, for apps recently killed by a limit.
    pub threads: usize,
    /// The cap on live instances, pooled, per-request and spares alike;
    /// default 1000.
    pub max_instances: usize,
    /// Blank instances each thread keeps ready for misses; default 2.
    pub spares_per_thread: usize,
    /// Requests one pooled instance works on at once (interleaved at their
    /// await points); more wait for a slot. Default 64.
    pub max_concurrency: usize,
    /// Replicas: an app whose home-thread instance has at least this many
    /// requests in flight, and whose requests wait in its queue at least
    /// `replica_queue_wait` on average, gets instances on other threads
    /// too; default 4.
    pub replica_threshold: usize,
    /// See `replica_threshold`; default 2 ms.
    pub replica_queue_wait: std::time::Duration,
    /// The most replicas (instances off the home thread) one app version
    /// may have; default `threads - 1`.
    pub max_replicas: usize,
    /// A replica idle this long is retired; default 5 s.
    pub replica_idle: std::time::Duration,
    /// The process's default limits. Spares are made with its heap sizes
    /// and serve only apps whose heap sizes are the same (heap limits are
    /// fixed when an isolate is created).
    pub limits: isopod_runtime::Limits,
    /// The process's resident-memory budget in bytes; default 75 % of the
    /// machine's memory. A miss that finds the process past 90 % of it
    /// first evicts its thread's least recently used idle instances and
    /// drops them at once; past all of it with nothing idle left to evict,
    /// it is refused ([`crate::PoolError::OverMemoryBudget`]) instead of
    /// growing until the kernel kills the process. Idle threads also evict
    /// past 90 %, one instance per check.
    pub memory_budget: u64,
    /// V8's process-wide settings (flags, the code cache). The first pool
    /// or server of a process fixes them.
    pub v8: isopod_runtime::V8Settings,
    /// Whether [`Pool::deployed`] leaves one warm instance of a pooled
    /// version on its home thread, so the first request after a deploy
    /// finds it; default true.
    pub warm_on_deploy: bool,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_instances: 1000,
            spares_per_thread: 2,
            max_concurrency: 64,
            replica_threshold: 4,
            replica_queue_wait: std::time::Duration::from_millis(2),
            max_replicas: usize::MAX,
            replica_idle: std::time::Duration::from_secs(5),
            limits: isopod_runtime::Limits::default(),
            memory_budget: crate::memory::default_budget(),
            v8: isopod_runtime::V8Settings::default(),
            warm_on_deploy: true,
        }
    }
}

enum Job {
    Dispatch {
        version: Arc<AppVersion>,
        request: IncomingRequest,
        reply: oneshot::Sender<Result<OutgoingResponse, PoolError>>,
    },
    Rows {
        reply: oneshot::Sender<Vec<InstanceRow>>,
    },
    /// Another thread's miss needs memory: evict an idle instance here and
    /// drop it now; the answer is what was freed, `None` if nothing was
    /// idle.
    EvictForMemory {
        reply: oneshot::Sender<Option<u64>>,
    },
    Deployed {
        version: Arc<AppVersion>,
    },
    Removed {
        app: Arc<str>,
    },
    /// Starts a task next to the thread's share of the pool.
    Spawn {
        task: ThreadTask,
    },
    /// Ends the thread (the channels themselves stay open while any
    /// `PoolThread` holds a sender).
    Stop,
}

/// What every thread (and every `Pool` handle) shares: the counters and the
/// way to reach each worker thread.
struct Inner {
    shared: Arc<Shared>,
    /// One per worker thread, then the quarantine thread's (the last).
    jobs: Vec<mpsc::UnboundedSender<Job>>,
    config: PoolConfig,
}

impl Inner {
    /// Worker threads: the ones apps are homed on (and, in a server, the
    /// ones that accept connections).
    fn workers(&self) -> usize {
        self.jobs.len() - 1
    }

    /// The quarantine thread's index: it comes after the workers.
    fn quarantine(&self) -> usize {
        self.workers()
    }

    fn home_thread(&self, app: &str) -> usize {
        (fnv1a(app.as_bytes()) % self.workers() as u64) as usize
    }

    /// Where `version` is served from a thread that has no say: the
    /// quarantine thread for a version recently killed by a limit, else
    /// its home.
    fn placement(&self, version: &AppVersion) -> usize {
        if version.load.quarantined() {
            self.quarantine()
        } else {
            self.home_thread(version.app())
        }
    }

    async fn dispatch_on(
        &self,
        thread: usize,
        version: &Arc<AppVersion>,
        request: IncomingRequest,
    ) -> Result<OutgoingResponse, PoolError> {
        let (reply, response) = oneshot::channel();
        self.jobs[thread]
            .send(Job::Dispatch {
                version: version.clone(),
                request,
                reply,
            })
            .map_err(|_| PoolError::ShutDown)?;
        response.await.map_err(|_| PoolError::ShutDown)?
    }
}

/// A future each worker thread runs next to its share of the pool (an
/// embedder's accept loop, say), given that thread's [`PoolThread`].
pub type ThreadMain = Arc<dyn Fn(PoolThread) -> LocalBoxFuture<'static, ()> + Send + Sync>;

/// A task started on one worker thread after the pool has started (see
/// [`Pool::spawn_on_worker`]).
pub type ThreadTask = Box<dyn FnOnce(PoolThread) -> LocalBoxFuture<'static, ()> + Send>;

/// A worker thread's view of the pool, for code running on that thread.
/// `!Send`: it dispatches to this thread's instances without a hop.
#[derive(Clone)]
pub struct PoolThread {
    index: usize,
    local: Rc<LocalPool>,
    inner: Arc<Inner>,
}

impl PoolThread {
    /// This thread's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Serves `request` on this thread when it has a warm instance of
    /// `version` or is the app's home thread; otherwise hands it to the
    /// home thread. A cross-thread hop costs more than a small handler's
    /// whole JavaScript call, so the local case takes no channel.
    ///
    /// A version recently killed by a limit is served on the quarantine
    /// thread instead, which accepts no connections and runs at a lower
    /// priority: its runaway windows then hold up no other app's requests
    /// and no connection's I/O (see ARCHITECTURE.md, "Quarantine").
    ///
    /// A warm hit with a permit free, the usual request, is sent to its
    /// instance before this returns, and the future only waits for the
    /// response: the request is not carried through the layers of futures
    /// the other cases (a miss, a permit wait, a hop) take, which are
    /// boxed.
    pub fn dispatch<'a>(
        &'a self,
        version: &'a Arc<AppVersion>,
        request: IncomingRequest,
    ) -> impl Future<Output = Result<OutgoingResponse, PoolError>> + 'a {
        let request = if version.load.quarantined() {
            request
        } else {
            match self.local.dispatch_warm(version, request) {
                Ok(warm) => return Either::Left(warm),
                Err(request) => request,
            }
        };
        Either::Right(Box::pin(self.dispatch_elsewhere(version, request)))
    }

    /// [`PoolThread::dispatch`] for everything but a warm hit.
    async fn dispatch_elsewhere(
        &self,
        version: &Arc<AppVersion>,
        request: IncomingRequest,
    ) -> Result<OutgoingResponse, PoolError> {
        if version.load.quarantined() {
            let quarantine = self.inner.quarantine();
            return self.inner.dispatch_on(quarantine, version, request).await;
        }
        let home = self.inner.home_thread(version.app());
        if home == self.index || self.local.has_warm(version) || self.should_replicate(version) {
            self.local.dispatch(version.clone(), request).await
        } else {
            self.inner.dispatch_on(home, version, request).await
        }
    }

    /// Whether this (non-home) thread should start a replica of `version`:
    /// its home instance has requests in flight and they wait in its queue,
    /// and the app is under its replica cap. A light app's requests finish
    /// before they pile up, so it never gets one.
    fn should_replicate(&self, version: &Arc<AppVersion>) -> bool {
        let config = &self.inner.config;
        version.mode == crate::ExecutionMode::Pooled
            && version.load.home_in_flight.load(Ordering::Relaxed) >= config.replica_threshold
            && version.load.home_queue_wait_us.load(Ordering::Relaxed)
                >= config.replica_queue_wait.as_micros() as u64
            && version.load.replicas.load(Ordering::Relaxed)
                < config.max_replicas.min(self.inner.workers() - 1)
    }
}

/// A pool of isolates on M worker threads, plus one quarantine thread.
///
/// Each app has a home thread (a stable hash of its name); its pooled
/// instances live there, one per version, created on the first request and
/// kept warm until evicted under the cap or retired by a newer deploy. For
/// a while after a limit kills one of its instances, a version is served
/// on the quarantine thread instead (which runs no `ThreadMain`, so no
/// accept loop, at a lower OS priority). Instances never leave their
/// thread. `Pool` itself is `Send + Sync`: any
/// thread may dispatch.
///
/// ```no_run
/// use isopod_pool::{AppVersion, ExecutionMode, Pool, PoolConfig};
/// use isopod_runtime::{AppConfig, Bundle, IncomingRequest};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::start(PoolConfig::default())?;
/// let bundle = Bundle::from_source(
///     "hello.js",
///     "export default { fetch() { return new Response('hi'); } };",
/// );
/// let version = AppVersion::new(AppConfig::new("hello"), bundle, ExecutionMode::Pooled);
/// let response = pool
///     .dispatch(&version, IncomingRequest {
///         method: http::Method::GET,
///         version: http::Version::HTTP_11,
///         url: "http://hello.localhost/".into(),
///         headers: Default::default(),
///         body: None,
///         received: std::time::Instant::now(),
///         request_id: "".into(),
///     })
///     .await?;
/// assert_eq!(response.status(), 200);
/// # Ok(()) }
/// ```
pub struct Pool {
    inner: Arc<Inner>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// Starts the worker threads.
    pub fn start(config: PoolConfig) -> Result<Pool, PoolError> {
        Pool::start_with(config, None)
    }

    /// Starts the worker threads, each also running `main` with its
    /// [`PoolThread`] (an HTTP accept loop, for instance). The thread ends
    /// when the pool is dropped, cancelling `main`.
    pub fn start_with(config: PoolConfig, main: Option<ThreadMain>) -> Result<Pool, PoolError> {
        isopod_runtime::init_v8_with(&config.v8);
        let shared = Arc::new(Shared::new(config.max_instances));
        let workers = config.threads.max(1);
        let (jobs, inboxes): (Vec<_>, Vec<_>) =
            (0..=workers).map(|_| mpsc::unbounded_channel()).unzip();
        let inner = Arc::new(Inner {
            shared,
            jobs,
            config: config.clone(),
        });
        let mut threads = Vec::new();
        for (index, inbox) in inboxes.into_iter().enumerate() {
            let inner = inner.clone();
            let (name, main) = match index == workers {
                false => (format!("isopod-worker-{index}"), main.clone()),
                // Accepts nothing and runs nothing but quarantined apps.
                true => ("isopod-quarantine".to_string(), None),
            };
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || worker_main(index, inner, inbox, main))
                .map_err(PoolError::Thread)?;
            threads.push(thread);
        }
        Ok(Pool {
            inner,
            threads: std::sync::Mutex::new(threads),
        })
    }

    /// The worker thread an app's instances live on: a stable hash of its
    /// name.
    pub fn home_thread(&self, app: &str) -> usize {
        self.inner.home_thread(app)
    }

    /// Serves `request` with an instance of `version`, on the app's home
    /// thread (or the quarantine thread, after a kill).
    pub async fn dispatch(
        &self,
        version: &Arc<AppVersion>,
        request: IncomingRequest,
    ) -> Result<OutgoingResponse, PoolError> {
        let thread = self.inner.placement(version);
        self.inner.dispatch_on(thread, version, request).await
    }

    /// Tells every thread that `version` is its app's newest: instances of
    /// older versions stop taking requests and are dropped once idle.
    pub fn deployed(&self, version: &Arc<AppVersion>) {
        for jobs in &self.inner.jobs {
            let _ = jobs.send(Job::Deployed {
                version: version.clone(),
            });
        }
    }

    /// Counters and one row per live pooled instance.
    pub async fn stats(&self) -> PoolStats {
        let mut rows = Vec::new();
        for jobs in &self.inner.jobs {
            let (reply, answer) = oneshot::channel();
            if jobs.send(Job::Rows { reply }).is_ok() {
                rows.extend(answer.await.unwrap_or_default());
            }
        }
        self.inner.shared.snapshot(self.inner.jobs.len(), rows)
    }

    /// Kills of `app`'s instances: counts per reason and the most recent
    /// events.
    pub fn kills(&self, app: &str) -> crate::AppKills {
        self.inner.shared.kills(app)
    }

    /// The number of worker threads (the threads that run a [`ThreadMain`];
    /// the quarantine thread is not one of them).
    pub fn workers(&self) -> usize {
        self.inner.workers()
    }

    /// Starts `task` on worker thread `thread`, given that thread's
    /// [`PoolThread`], as its `ThreadMain` was (an embedder's new listener,
    /// say). False when there is no such worker or the pool has stopped.
    pub fn spawn_on_worker(&self, thread: usize, task: ThreadTask) -> bool {
        thread < self.inner.workers() && self.inner.jobs[thread].send(Job::Spawn { task }).is_ok()
    }

    /// Tells every thread that `app` is gone: its instances stop taking
    /// requests and are dropped once idle.
    pub fn removed(&self, app: &str) {
        for jobs in &self.inner.jobs {
            let _ = jobs.send(Job::Removed { app: app.into() });
        }
    }

    /// Blocks until the worker threads stop (they run until the pool is
    /// shut down or dropped).
    pub fn wait(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }

    /// Stops the worker threads and waits for them.
    pub fn shutdown(&self) {
        for jobs in &self.inner.jobs {
            let _ = jobs.send(Job::Stop);
        }
        self.wait();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker_main(
    index: usize,
    inner: Arc<Inner>,
    mut inbox: mpsc::UnboundedReceiver<Job>,
    main: Option<ThreadMain>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot build a pool thread's runtime");
            return;
        }
    };
    let quarantine = index == inner.quarantine();
    if quarantine {
        isopod_runtime::lower_thread_priority();
    }
    let local_set = tokio::task::LocalSet::new();
    local_set.block_on(&runtime, async move {
        let home_of = {
            let inner = inner.clone();
            move |app: &str| inner.home_thread(app)
        };
        let evict_elsewhere = {
            let inner = inner.clone();
            move || {
                inner
                    .jobs
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != index)
                    .filter_map(|(_, jobs)| {
                        let (reply, answer) = oneshot::channel();
                        jobs.send(Job::EvictForMemory { reply }).ok()?;
                        Some(answer)
                    })
                    .collect()
            }
        };
        let local = LocalPool::new(
            index,
            inner.shared.clone(),
            &inner.config,
            Box::new(home_of),
            Box::new(evict_elsewhere),
        );
        if inner.config.spares_per_thread > 0 && !quarantine {
            tokio::task::spawn_local(local.clone().refill_spares());
        }
        tokio::task::spawn_local(local.clone().retire_idle_replicas());
        tokio::task::spawn_local(local.clone().reap());
        tokio::task::spawn_local(local.clone().watch_memory());
        let thread = PoolThread {
            index,
            local: local.clone(),
            inner: inner.clone(),
        };
        if let Some(main) = main {
            tokio::task::spawn_local(main(thread.clone()));
        }
        while let Some(job) = inbox.recv().await {
            match job {
                Job::Dispatch {
                    version,
                    request,
                    reply,
                } => {
                    let local = local.clone();
                    tokio::task::spawn_local(async move {
                        let mut reply = reply;
                        tokio::select! {
                            response = local.dispatch(version, request) => {
                                let _ = reply.send(response);
                            }
                            // The requester went away (its client
                            // disconnected): dropping the dispatch here
                            // aborts the request, as it would locally.
                            () = reply.closed() => {}
                        }
                    });
                }
                Job::Rows { reply } => {
                    let _ = reply.send(local.rows());
                }
                Job::EvictForMemory { reply } => {
                    let local = local.clone();
                    tokio::task::spawn_local(async move {
                        let _ = reply.send(local.evict_for_memory().await);
                    });
                }
                Job::Deployed { version } => {
                    if local.note_version(&version)
                        && inner.config.warm_on_deploy
                        && version.mode == crate::ExecutionMode::Pooled
                        && inner.home_thread(version.app()) == index
                    {
                        let local = local.clone();
                        tokio::task::spawn_local(async move { local.warm(&version).await });
                    }
                }
                Job::Removed { app } => local.remove_app(&app),
                Job::Spawn { task } => {
                    tokio::task::spawn_local(task(thread.clone()));
                }
                Job::Stop => break,
            }
        }
    });
    // Dropping the LocalSet drops the remaining instances here, on their
    // thread, in whatever order; the instances allow any.
}

/// FNV-1a: a stable hash, so an app's home thread does not change between
/// runs or Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
