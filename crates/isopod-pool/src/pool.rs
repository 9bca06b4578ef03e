//! The pool: worker threads, and the way requests reach them.

use std::sync::Arc;
use std::thread::JoinHandle;

use isopod_runtime::{IncomingRequest, OutgoingResponse};
use tokio::sync::{mpsc, oneshot};

use crate::local::LocalPool;
use crate::stats::{InstanceRow, PoolStats, Shared};
use crate::version::AppVersion;
use crate::PoolError;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads; default one per core.
    pub threads: usize,
    /// The cap on live instances, pooled and per-request alike; default 1000.
    pub max_instances: usize,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_instances: 1000,
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
    Deployed {
        version: Arc<AppVersion>,
    },
}

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    thread: Option<JoinHandle<()>>,
}

/// A pool of isolates on M worker threads.
///
/// Each app has a home thread (a stable hash of its name); its pooled
/// instances live there, one per version, created on the first request and
/// kept warm until evicted under the cap or retired by a newer deploy.
/// Instances never leave their thread. `Pool` itself is `Send + Sync`: any
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
///         url: "http://hello.localhost/".into(),
///         headers: Default::default(),
///         body: None,
///     })
///     .await?;
/// assert_eq!(response.status(), 200);
/// # Ok(()) }
/// ```
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<Worker>,
}

impl Pool {
    /// Starts the worker threads.
    pub fn start(config: PoolConfig) -> Result<Pool, PoolError> {
        isopod_runtime::init_v8();
        let shared = Arc::new(Shared::new(config.max_instances));
        let mut workers = Vec::new();
        for index in 0..config.threads.max(1) {
            let (jobs, inbox) = mpsc::unbounded_channel();
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("isopod-pool-{index}"))
                .spawn(move || worker_main(index, shared, inbox))
                .map_err(PoolError::Thread)?;
            workers.push(Worker {
                jobs,
                thread: Some(thread),
            });
        }
        Ok(Pool { shared, workers })
    }

    /// The worker thread an app's instances live on.
    pub fn home_thread(&self, app: &str) -> usize {
        (fnv1a(app.as_bytes()) % self.workers.len() as u64) as usize
    }

    /// Serves `request` with an instance of `version`.
    pub async fn dispatch(
        &self,
        version: &Arc<AppVersion>,
        request: IncomingRequest,
    ) -> Result<OutgoingResponse, PoolError> {
        let worker = &self.workers[self.home_thread(version.app())];
        let (reply, response) = oneshot::channel();
        worker
            .jobs
            .send(Job::Dispatch {
                version: version.clone(),
                request,
                reply,
            })
            .map_err(|_| PoolError::ShutDown)?;
        response.await.map_err(|_| PoolError::ShutDown)?
    }

    /// Tells every thread that `version` is its app's newest: instances of
    /// older versions stop taking requests and are dropped once idle.
    pub fn deployed(&self, version: &Arc<AppVersion>) {
        for worker in &self.workers {
            let _ = worker.jobs.send(Job::Deployed {
                version: version.clone(),
            });
        }
    }

    /// Counters and one row per live pooled instance.
    pub async fn stats(&self) -> PoolStats {
        let mut rows = Vec::new();
        for worker in &self.workers {
            let (reply, answer) = oneshot::channel();
            if worker.jobs.send(Job::Rows { reply }).is_ok() {
                rows.extend(answer.await.unwrap_or_default());
            }
        }
        self.shared.snapshot(rows)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let threads: Vec<_> = self
            .workers
            .iter_mut()
            .filter_map(|w| w.thread.take())
            .collect();
        // Closing the job channels ends each thread's loop.
        self.workers.clear();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn worker_main(index: usize, shared: Arc<Shared>, mut inbox: mpsc::UnboundedReceiver<Job>) {
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
    let local_set = tokio::task::LocalSet::new();
    local_set.block_on(&runtime, async move {
        let local = LocalPool::new(index, shared);
        while let Some(job) = inbox.recv().await {
            match job {
                Job::Dispatch {
                    version,
                    request,
                    reply,
                } => {
                    let local = local.clone();
                    tokio::task::spawn_local(async move {
                        let _ = reply.send(local.dispatch(version, request).await);
                    });
                }
                Job::Rows { reply } => {
                    let _ = reply.send(local.rows());
                }
                Job::Deployed { version } => local.note_version(&version),
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
