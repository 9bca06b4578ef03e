//! How the serving process gets a version's snapshot ([`Snapshotter`]), and
//! the checking process's side of it ([`serve_snapshot_request`]).
//!
//! Two steps. First a process of its own runs the bundle's top-level code
//! in a snapshotting isolate and serialises it, as a check: a tenant's heap
//! that V8's serialiser cannot take, or top-level code that crashes or
//! hangs, costs that process, never the server. Only if it succeeded is the
//! snapshot made again in the serving process, on a thread of its own, and
//! those bytes are kept: every isolate of a process shares one read-only
//! space, and V8 fills a snapshot's read-only space from the process that
//! makes it, so a snapshot made elsewhere does not fit beside the isolates
//! already running here.
//!
//! Protocol of the checking process: the request as JSON on its standard
//! input; exit status 0 when the snapshot was made; a refusal or failure as
//! JSON (`{"tainted": [...]}` or `{"failed": "..."}`) on its standard output
//! and status 3. Anything else (a crash, a signal, a hang past the deadline,
//! after which it is killed) is a failure. Its standard error is discarded:
//! it runs tenant code.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::make::{make_on_this_thread, Process, SnapshotRequest};
use super::{NotSnapshottable, VersionSnapshot};
use crate::bundle::Bundle;
use crate::instance::AppConfig;

/// Exit status of a checking process that refused or failed, with its
/// reason on standard output.
const REFUSED: i32 = 3;

/// Makes versions' snapshots: checks each in a process of its own (normally
/// the isopod binary itself, run with a hidden subcommand that calls
/// [`serve_snapshot_request`]), then makes it here.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    program: PathBuf,
    args: Vec<OsString>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Refusal {
    Tainted(Vec<String>),
    Failed(String),
}

impl From<NotSnapshottable> for Refusal {
    fn from(refused: NotSnapshottable) -> Refusal {
        match refused {
            NotSnapshottable::Tainted(reasons) => Refusal::Tainted(reasons),
            NotSnapshottable::Failed(reason) => Refusal::Failed(reason),
            other => Refusal::Failed(other.to_string()),
        }
    }
}

impl Snapshotter {
    /// Checks each version by running `program args…`.
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>) -> Snapshotter {
        Snapshotter {
            program: program.into(),
            args,
        }
    }

    /// Makes the snapshot of `bundle` for `app`. Its top-level code may run
    /// for the app's startup budget plus a second in each step; the checking
    /// process is killed if it is not done five seconds after that.
    ///
    /// Call it from a thread that may block for as long (the serving step
    /// runs on a thread of its own and this awaits it).
    pub async fn make(
        &self,
        bundle: &Bundle,
        app: &AppConfig,
    ) -> Result<VersionSnapshot, NotSnapshottable> {
        let request = request_for(bundle, app);
        self.check(&request).await?;
        let (made, answer) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("isopod-snapshot".into())
            .spawn(move || {
                // Background work: serving threads go first.
                crate::scheduling::lower_thread_priority();
                let _ = made.send(make_on_this_thread(request, Process::Serving));
            })
            .map_err(|e| NotSnapshottable::Failed(e.to_string()))?;
        let bytes = answer
            .await
            .map_err(|_| NotSnapshottable::Failed("the snapshot thread panicked".into()))??;
        Ok(VersionSnapshot::from_bytes(bytes.into()))
    }

    /// Runs the checking process on `request`.
    async fn check(&self, request: &SnapshotRequest) -> Result<(), NotSnapshottable> {
        let failed = |e: &dyn std::fmt::Display| NotSnapshottable::Failed(e.to_string());
        let json = serde_json::to_vec(request).map_err(|e| failed(&e))?;
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                NotSnapshottable::Failed(format!(
                    "cannot start the snapshot checking process {}: {e}",
                    self.program.display()
                ))
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&json).await.map_err(|e| failed(&e))?;
        }
        // The child's own deadline is CPU time (see `make.rs`); this one
        // only catches a child that hangs, on a machine that may be busy.
        let limit = Duration::from_millis(request.deadline_ms) * 20 + Duration::from_secs(5);
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| {
                NotSnapshottable::Failed(format!(
                    "the snapshot checking process took longer than {} s",
                    limit.as_secs()
                ))
            })?
            .map_err(|e| failed(&e))?;
        match output.status.code() {
            Some(0) => Ok(()),
            Some(REFUSED) => match serde_json::from_slice::<Refusal>(&output.stdout) {
                Ok(Refusal::Tainted(reasons)) => Err(NotSnapshottable::Tainted(reasons)),
                Ok(Refusal::Failed(reason)) => Err(NotSnapshottable::Failed(reason)),
                Err(e) => Err(failed(&e)),
            },
            _ => Err(NotSnapshottable::Failed(format!(
                "the snapshot checking process ended with {}",
                output.status
            ))),
        }
    }
}

/// What the snapshotting isolate is told about `bundle` and `app`.
pub(super) fn request_for(bundle: &Bundle, app: &AppConfig) -> SnapshotRequest {
    let is_module = bundle.is_module().get().copied();
    SnapshotRequest {
        app: app.name.to_string(),
        specifier: bundle.specifier().to_string(),
        source: bundle.source().to_string(),
        is_module,
        globals: if is_module == Some(true) {
            Vec::new()
        } else {
            app.vars.clone()
        },
        heap_initial_bytes: app.limits.heap_initial_bytes(),
        heap_max_bytes: app.limits.heap_max_bytes(),
        deadline_ms: app.limits.startup_cpu_ms.saturating_add(1000),
        share_random: app.snapshot == crate::SnapshotPolicy::ShareRandom,
    }
}

/// The checking process's side: reads a request on standard input, makes
/// the snapshot, and returns the exit status (answering a refusal on
/// standard output). For a hidden subcommand of the serving binary.
pub fn serve_snapshot_request() -> i32 {
    // Background work for the server that started it; threads V8 starts
    // later inherit the lower priority.
    crate::scheduling::lower_thread_priority();
    // A panic (deno_core refuses some host objects in a snapshotting
    // isolate) is answered as a failure and ends the process at once,
    // without unwinding through a live isolate.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let status = answer(Refusal::Failed(format!(
            "its top-level code used something a snapshot cannot hold ({what})"
        )));
        std::process::exit(status);
    }));
    let mut json = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut json) {
        return answer(Refusal::Failed(format!("reading the request: {e}")));
    }
    let request: SnapshotRequest = match serde_json::from_slice(&json) {
        Ok(request) => request,
        Err(e) => return answer(Refusal::Failed(format!("a malformed request: {e}"))),
    };
    match make_on_this_thread(request, Process::Checking) {
        Ok(_) => 0,
        Err(refused) => answer(refused.into()),
    }
}

fn answer(refusal: Refusal) -> i32 {
    let text = serde_json::to_vec(&refusal).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&text).and_then(|()| stdout.flush());
    REFUSED
}
