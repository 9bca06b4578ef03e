//! Shared test machinery: a real `isopod` process on an ephemeral loopback
//! port, its JSON log records, and a real HTTP/1.1 client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The isopod binary under test.
pub(crate) fn isopod_bin() -> &'static str {
    env!("CARGO_BIN_EXE_isopod")
}

/// A file under `crates/isopod/tests/fixtures`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A bundle built from `examples/` by `npm run build` (done by `.ci/run`).
pub(crate) fn example_dist(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/dist")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the examples first (`npm --prefix examples ci && npm --prefix examples run build`, as .ci/run does)",
        path.display()
    );
    path
}

/// Writes `source` to a fresh temporary bundle file.
///
/// Each call gets its own directory: tests run concurrently and several
/// write a bundle of the same name, and one test's `isopod` must never read
/// a file another test is rewriting (it would see it empty).
pub(crate) fn temp_bundle(name: &str, source: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "isopod-it-{}-{}",
        std::process::id(),
        BUNDLE_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path
}

static BUNDLE_DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static SERVE_DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A free loopback port (bound and released; fine for tests).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory under the system's temporary one.
pub(crate) fn fresh_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "isopod-{what}-{}-{}",
        std::process::id(),
        SERVE_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `isopod run` or `isopod serve` process.
pub(crate) struct Isopod {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the config enables it.
    pub admin: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Isopod {
    /// Starts `isopod run BUNDLE --port 0 ARGS…` and waits until it listens.
    pub(crate) fn start(bundle: &Path, args: &[&str]) -> Isopod {
        let mut command = Command::new(isopod_bin());
        command
            .arg("run")
            .arg(bundle)
            .args(["--port", "0"])
            .args(args);
        Isopod::spawn(command)
    }

    /// Starts `isopod serve` on a config written to a fresh directory with
    /// the given bundles beside it; the config's `listen` is set to an
    /// ephemeral loopback port.
    pub(crate) fn serve(config: &str, bundles: &[(&str, &str)]) -> Isopod {
        Isopod::serve_with_env(config, bundles, &[])
    }

    /// [`Isopod::serve`] with extra environment variables.
    pub(crate) fn serve_with_env(
        config: &str,
        bundles: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Isopod {
        Isopod::serve_in(&fresh_dir("serve"), config, bundles, env)
    }

    /// [`Isopod::serve_with_env`] in `dir`, whose registry (`dir/data`) a
    /// second process started there finds again.
    pub(crate) fn serve_in(
        dir: &Path,
        config: &str,
        bundles: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Isopod {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        for (name, source) in bundles {
            std::fs::write(dir.join(name), source).unwrap();
        }
        std::fs::write(
            dir.join("isopod.toml"),
            format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{config}"),
        )
        .unwrap();
        let mut command = Command::new(isopod_bin());
        command
            .arg("serve")
            .arg("--config")
            .arg(dir.join("isopod.toml"))
            .envs(env.iter().copied());
        Isopod::spawn(command)
    }

    fn spawn(mut command: Command) -> Isopod {
        let mut child = command
            .env("ISOPOD_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("isopod starts");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let Ok(record) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("isopod (not JSON): {line}");
                    continue;
                };
                if record["message"] == "listening" {
                    if let Some(tx) = addr_tx.take() {
                        let url = record["url"].as_str().unwrap_or_default().to_string();
                        let admin = record["admin_url"].as_str().unwrap_or_default().to_string();
                        let _ = tx.send((url, admin));
                    }
                }
                sink.lock().unwrap().push(record);
            }
        });
        let (url, admin) = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let status = child.try_wait();
                panic!("isopod did not start listening (exit: {status:?})")
            });
        let addr = url
            .trim_start_matches("http://")
            .parse()
            .expect("listen address");
        let admin = admin
            .strip_prefix("http://")
            .map(|a| a.parse().expect("admin address"));
        Isopod {
            child,
            addr,
            admin,
            logs,
        }
    }

    /// The process's resident memory, from `/proc`.
    pub(crate) fn rss_bytes(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    /// The most resident memory the process has had (its high-water mark).
    pub(crate) fn peak_rss_bytes(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    /// A `kB` line of `/proc/PID/status`.
    fn status_kib(&self, line: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} in /proc/PID/status"))
    }

    /// Every log record so far.
    pub(crate) fn logs(&self) -> Vec<Value> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits up to 10 s for a log record matching `predicate`.
    pub(crate) fn wait_for_log(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(record) = self.logs().into_iter().find(|r| predicate(r)) {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "no log record for {what}; logs: {:#?}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` with `Host: localhost`, body collected.
    pub(crate) async fn get(&self, path: &str) -> (u16, http::HeaderMap, String) {
        self.get_host("localhost", path).await
    }

    /// `GET path` with the given `Host`, body collected.
    pub(crate) async fn get_host(&self, host: &str, path: &str) -> (u16, http::HeaderMap, String) {
        let request = http::Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = send(self.addr, request).await;
        collect(response).await
    }

    /// `GET path`, the body parsed as JSON (status must be 200).
    pub(crate) async fn get_json(&self, path: &str) -> Value {
        let (status, _, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

/// Another address of the same process (an app's own port).
pub(crate) struct Endpoint {
    addr: SocketAddr,
}

impl Endpoint {
    /// Uses `port` on the same IP.
    pub(crate) fn set_port(&mut self, port: u16) {
        self.addr.set_port(port);
    }

    /// `GET path` with the given `Host`.
    pub(crate) async fn get_host(&self, host: &str, path: &str) -> (u16, http::HeaderMap, String) {
        let request = http::Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        collect(send(self.addr, request).await).await
    }
}

impl Isopod {
    /// An endpoint at this process's main address.
    pub(crate) fn clone_addr(&self) -> Endpoint {
        Endpoint { addr: self.addr }
    }
}

impl Isopod {
    /// Sends the process `signal` (`TERM`, `INT`) with `kill`.
    pub(crate) fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal}");
    }

    /// Waits (up to 30 s) for the process to exit; its exit status.
    pub(crate) fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .expect("the process can be waited for")
            {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Isopod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `isopod ARGS…` to completion: (exit success, stderr).
pub(crate) fn run_to_exit(args: &[&str]) -> (bool, String) {
    let output = Command::new(isopod_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("isopod runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub(crate) async fn send<B>(addr: SocketAddr, request: http::Request<B>) -> http::Response<Incoming>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender.send_request(request).await.expect("response")
}

/// Status, headers and the whole body as text.
pub(crate) async fn collect(response: http::Response<Incoming>) -> (u16, http::HeaderMap, String) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Reads a response body frame by frame: the text, and when each data frame
/// arrived (measured from `started`).
pub(crate) async fn timed_chunks(
    response: http::Response<Incoming>,
    started: Instant,
) -> (String, Vec<Duration>) {
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            arrivals.push(started.elapsed());
            text.push_str(std::str::from_utf8(&data).expect("UTF-8 body"));
        }
    }
    (text, arrivals)
}

/// The admin token the admin tests configure.
pub(crate) const ADMIN_TOKEN: &str = "test-token-0123456789";

impl Isopod {
    /// An admin API call: (status, JSON body).
    pub(crate) async fn admin(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (u16, Value) {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "admin");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let (content_type, body) = body.unwrap_or(("text/plain", String::new()));
        let request = request
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let (status, _, text) =
            collect(send(self.admin.expect("admin enabled"), request).await).await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Polls `GET path` on the admin API (with [`ADMIN_TOKEN`]) until
    /// `done` holds for its answer, and returns that answer: the test waits
    /// for the state it needs, not for a guessed delay. Fails after thirty
    /// seconds, a loaded machine's margin.
    pub(crate) async fn await_admin(
        &self,
        path: &str,
        why: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, answer) = self.admin("GET", path, Some(ADMIN_TOKEN), None).await;
            if done(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "{why}: {answer}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads from `stream` until `done` says the text so far is complete.
pub(crate) async fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(&text) {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .expect("response in time");
    text
}

/// Sends `request` as written on a fresh connection; the answer, once its
/// head and body are in.
pub(crate) async fn raw(isopod: &Isopod, request: &str) -> String {
    let mut stream = TcpStream::connect(isopod.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_until(&mut stream, |t| {
        t.contains("\r\n\r\n") && (t.ends_with('\n') || t.contains("content-length: 0"))
    })
    .await
}

/// Asserts that an admin call was refused with 400 and an `error` that
/// contains `reason`.
pub(crate) fn assert_admin_refused(status: u16, body: &Value, reason: &str) {
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(reason), "expected '{reason}' in {body}");
}

/// Runs `isopod ARGS` against the admin API at `url` (with the test token
/// unless `token` says otherwise): (success, stdout, stderr).
pub(crate) fn admin_cli(url: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(isopod_bin())
        .args(args)
        .env("ISOPOD_ADMIN_URL", url)
        .env("ISOPOD_ADMIN_TOKEN", token)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("isopod runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A server with the admin API (`ADMIN_TOKEN`) on two threads, whose
/// registry lives in `dir/data`, with `extra` config lines.
pub(crate) fn admin_server_in(dir: &Path, extra: &str) -> Isopod {
    Isopod::serve_in(
        dir,
        &format!(
            "threads = 2\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n{extra}"
        ),
        &[],
        &[],
    )
}

/// An admin manifest as JSON: `source` as its bundle, plus the fields of
/// `extra` (an object).
pub(crate) fn manifest_json(source: &str, extra: Value) -> String {
    let mut manifest = serde_json::json!({ "bundle": source });
    if let (Value::Object(fields), Value::Object(more)) = (&mut manifest, extra) {
        fields.extend(more);
    }
    manifest.to_string()
}
