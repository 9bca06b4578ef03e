//! The admin API, on its own listener and thread.
//!
//! Every call needs `Authorization: Bearer TOKEN` with one of the named
//! tokens (compared in constant time; 401 otherwise) except `GET /healthz`.
//! A change records the name of the token that made it.
//!
//! - `PUT /apps/NAME`: deploy or hot-swap. The body is a bare bundle (the
//!   app keeps its settings), or (with `content-type: application/json`) a
//!   manifest `{ "bundle": "…", "routes": [{ "host": "…", "path": "…" }],
//!   "vars": {…}, "secrets": {…}, "mode": "pooled" | "isolate-per-request",
//!   "limits": { "cpu_ms": 50, … }, "allow_net": ["127.0.0.1:9000",
//!   "10.1.0.0/16", "api.internal"], "port": 9000 }`. The bundle is
//!   evaluated in a scratch isolate under the startup budget first; a
//!   broken one answers 400 with the error and its file:line, and the
//!   running version keeps serving.
//! - `GET /apps`, `GET /apps/NAME`, `DELETE /apps/NAME`.
//! - `GET /apps/NAME/versions`; `POST /apps/NAME/rollback` (body `{"version":
//!   N}` or none, for the previous one); `PUT /apps/NAME/vars` (body
//!   `{"vars": {"K": "v"}, "secrets": {"S": "…"}}`, a `null` removing one).
//! - `GET /apps/NAME/logs`: the app's recent console, handler and kill
//!   records as JSON lines; `?follow=1` keeps the response open and adds
//!   every new record, access records included (server-sent events when
//!   the client accepts `text/event-stream`).
//! - `GET /admin/pool`: the pool's statistics. `GET /metrics`: Prometheus.
//! - `/apps/NAME/kv/BINDING…` and `/apps/NAME/d1/BINDING/…`: the app's
//!   storage through its binding; `GET /storage`, `DELETE
//!   /storage/kv/BACKEND/NAME`, `DELETE /storage/d1/NAME`, `GET
//!   /storage/d1/NAME/export`, `POST /storage/backup`: the server's
//!   storage as a whole (`admin_storage.rs`).
//!
//! Invariant: no response and no log record carries a secret's value;
//! secrets are listed by name.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use isopod_pool::Pool;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::app_metrics::AppMetricsSet;
use crate::deployments::{ChangeError, Changed, Deployments};
use crate::log_tail::LogTail;
use crate::manifest::{check_app_name, AppSettings};
use crate::registry::{Deployed, Registry};
use crate::routing::HostPattern;

/// The largest bundle or manifest `PUT /apps/NAME` accepts.
const MAX_DEPLOY_BYTES: usize = 64 * 1024 * 1024;

/// The largest body of the other calls.
const MAX_CALL_BYTES: usize = 1024 * 1024;
/// The largest KV value an operator may write (KV's own limit, 25 MiB).
const MAX_KV_VALUE_BYTES: usize = 25 * 1024 * 1024;

/// What the admin API needs.
pub(crate) struct Admin {
    /// The named tokens: (name, token).
    pub(crate) tokens: Vec<(String, String)>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) deployments: Arc<Deployments>,
    pub(crate) metrics: Arc<AppMetricsSet>,
    pub(crate) log_tail: Option<Arc<LogTail>>,
    /// Set when the server begins to stop: `/healthz` answers 503.
    pub(crate) draining: Arc<AtomicBool>,
    /// The process's memory budget, for `/metrics`.
    pub(crate) memory_budget: u64,
}

type AdminBody = BoxBody<Bytes, std::convert::Infallible>;
pub(crate) type AdminResponse = Response<AdminBody>;

/// Serves the admin API on `listener` from a thread of its own.
pub(crate) fn spawn(listener: TcpListener, admin: Admin) -> std::io::Result<()> {
    let admin = Arc::new(admin);
    std::thread::Builder::new().name("isopod-admin".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot build the admin runtime");
                return;
            }
        };
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(%error, "cannot register the admin listener");
                    return;
                }
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let admin = admin.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let admin = admin.clone();
                        async move { Ok::<_, std::convert::Infallible>(admin.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    })?;
    Ok(())
}

impl Admin {
    async fn handle(&self, request: Request<Incoming>) -> AdminResponse {
        let path = request.uri().path().to_string();
        if request.method() == Method::GET && path == "/healthz" {
            return if self.draining.load(Ordering::Relaxed) {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "status": "stopping" }),
                )
            } else {
                reply(StatusCode::OK, json!({ "status": "ok" }))
            };
        }
        let Some(who) = self.authorized(&request) else {
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        };
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(String::from)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (request.method().clone(), segments.as_slice()) {
            (Method::GET, ["apps"]) => self.list(),
            (Method::GET, ["apps", name]) => self.show(name).await,
            (Method::PUT, ["apps", name]) => self.deploy(name, &who, request).await,
            (Method::DELETE, ["apps", name]) => self.remove(name).await,
            (Method::GET, ["apps", name, "versions"]) => self.versions(name).await,
            (Method::POST, ["apps", name, "rollback"]) => self.rollback(name, &who, request).await,
            (Method::PUT, ["apps", name, "vars"]) => self.set_vars(name, &who, request).await,
            (Method::GET, ["apps", name, "logs"]) => self.logs(name, &request),
            (Method::GET, ["admin", "pool"]) => {
                let mut stats = json!(self.pool.stats().await);
                let (held, bytes) = self.deployments.snapshots_held();
                stats["snapshots_held"] = json!(held);
                stats["snapshot_bytes_held"] = json!(bytes);
                reply(StatusCode::OK, stats)
            }
            (Method::GET, ["metrics"]) => self.metrics().await,
            (_, ["apps", name, kind @ ("kv" | "d1"), binding, rest @ ..]) => {
                self.storage(name, kind, binding, rest, request).await
            }
            (method, ["storage", rest @ ..]) => self.storage_admin(method, rest, request).await,
            (
                _,
                ["apps"]
                | ["apps", _]
                | ["apps", _, "versions" | "rollback" | "vars" | "logs"]
                | ["admin", "pool"]
                | ["metrics"],
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
            _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }

    /// An app's KV namespace or D1 database through its binding (see
    /// `admin_storage.rs`).
    async fn storage(
        &self,
        name: &str,
        kind: &str,
        binding: &str,
        rest: &[&str],
        request: Request<Incoming>,
    ) -> AdminResponse {
        use crate::admin_storage as storage;
        let target = match storage::binding_target(&self.registry.snapshot(), name, binding) {
            Ok(target) => target,
            Err(refused) => return refused.respond(),
        };
        let method = request.method().clone();
        let query = request.uri().query().map(str::to_string);
        match (kind, method, rest) {
            ("kv", Method::GET, []) => match storage::kv(target) {
                Ok(namespace) => storage::list(namespace, query.as_deref()).await,
                Err(refused) => refused.respond(),
            },
            ("kv", method, key) if !key.is_empty() => {
                let key = storage::decode(&key.join("/"));
                let namespace = match storage::kv(target) {
                    Ok(namespace) => namespace,
                    Err(refused) => return refused.respond(),
                };
                match method {
                    Method::GET => storage::get(namespace, &key).await,
                    Method::DELETE => storage::delete(namespace, &key).await,
                    Method::PUT => match read_body(request, MAX_KV_VALUE_BYTES).await {
                        Ok(value) => storage::put(namespace, &key, value, query.as_deref()).await,
                        Err(refused) => refused,
                    },
                    _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
                }
            }
            ("d1", Method::POST, ["query"]) => {
                let database = match storage::d1(target) {
                    Ok(database) => database,
                    Err(refused) => return refused.respond(),
                };
                match read_body(request, MAX_CALL_BYTES).await {
                    Ok(body) => storage::query(database, &body).await,
                    Err(refused) => refused,
                }
            }
            ("d1", Method::GET, ["export"]) => {
                let (database, Some(store)) =
                    (storage::d1(target), self.deployments.storage.clone())
                else {
                    return error(StatusCode::NOT_FOUND, "this server keeps no storage");
                };
                let database = match database {
                    Ok(database) => database,
                    Err(refused) => return refused.respond(),
                };
                export_d1(store, database.name().to_string()).await
            }
            _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }

    /// The server's storage as a whole: what it keeps, deleting what no
    /// app names, and an online backup (see `admin_storage.rs`).
    async fn storage_admin(
        &self,
        method: Method,
        rest: &[&str],
        request: Request<Incoming>,
    ) -> AdminResponse {
        use crate::admin_storage as storage;
        let Some(store) = self.deployments.storage.clone() else {
            return error(StatusCode::NOT_FOUND, "this server keeps no storage");
        };
        match (method, rest) {
            (Method::GET, []) => storage::inventory(&store).await,
            (Method::DELETE, ["kv", backend, name]) => {
                storage::drop_storage(store, &self.registry.snapshot(), "kv", backend, name).await
            }
            (Method::DELETE, ["d1", name]) => {
                storage::drop_storage(store, &self.registry.snapshot(), "d1", "", name).await
            }
            (Method::GET, ["d1", name, "export"]) => export_d1(store, name.to_string()).await,
            (Method::POST, ["backup"]) => match read_body(request, MAX_CALL_BYTES).await {
                Ok(body) => storage::backup(store, &body).await,
                Err(refused) => refused,
            },
            _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }

    /// The name of the token the request presents, if it is one of ours.
    fn authorized(&self, request: &Request<Incoming>) -> Option<String> {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))?;
        // Every token is compared, whichever matches, so the time taken
        // does not tell which one nearly did.
        let mut found = None;
        for (name, token) in &self.tokens {
            if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
                found = Some(name.clone());
            }
        }
        found
    }

    fn list(&self) -> AdminResponse {
        let snapshot = self.registry.snapshot();
        let mut apps: Vec<Value> = snapshot.apps().map(|d| describe(d)).collect();
        apps.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        reply(StatusCode::OK, json!({ "apps": apps }))
    }

    /// The app as deployed, with its limits, what its instances use now,
    /// and its recent kills.
    async fn show(&self, name: &str) -> AdminResponse {
        let Some(deployed) = self.registry.snapshot().app(name).cloned() else {
            return error(StatusCode::NOT_FOUND, &format!("no app named '{name}'"));
        };
        let mut described = describe(&deployed);
        let rows: Vec<_> = self
            .pool
            .stats()
            .await
            .instances
            .into_iter()
            .filter(|row| row.app == name)
            .collect();
        described["limits"] = json!(deployed.version.config.limits);
        described["usage"] = json!({
            "instances": rows.len(),
            "in_flight": rows.iter().map(|r| r.in_flight).sum::<usize>(),
            "heap_used_bytes": rows.iter().map(|r| r.heap_used_bytes).sum::<usize>(),
            "requests_served": rows.iter().map(|r| r.requests_served).sum::<u64>(),
            "waiting_for_admission": deployed.admission.waiting(),
        });
        described["kills"] = json!(self.pool.kills(name));
        reply(StatusCode::OK, described)
    }

    /// `GET /metrics`: requests, the pool and each app's kills, for
    /// Prometheus.
    async fn metrics(&self) -> AdminResponse {
        let stats = self.pool.stats().await;
        let kills: Vec<(String, isopod_pool::AppKills)> = self
            .registry
            .snapshot()
            .apps()
            .map(|deployed| {
                let app = deployed.version.app().to_string();
                let kills = self.pool.kills(&app);
                (self.metrics.label_of(&app), kills)
            })
            .collect();
        let text = crate::metrics::render(&crate::metrics::Scrape {
            stats: &stats,
            kills: &kills,
            apps: &self.metrics.all(),
            memory_budget: self.memory_budget,
            label_of: &|app| self.metrics.label_of(app),
        });
        let mut response = Response::new(full(Bytes::from(text)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    async fn remove(&self, name: &str) -> AdminResponse {
        match self.deployments.remove(name).await {
            Ok(_) => reply(StatusCode::OK, json!({ "removed": name })),
            Err(refused) => change_error(refused),
        }
    }

    async fn deploy(&self, name: &str, who: &str, request: Request<Incoming>) -> AdminResponse {
        if let Err(refused) = check_app_name(name) {
            return error(StatusCode::BAD_REQUEST, &refused.to_string());
        }
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = match read_body(request, MAX_DEPLOY_BYTES).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        let (source, settings, port) = match parse_body(&body, is_json) {
            Ok(parsed) => parsed,
            Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
        };
        // A bare bundle keeps the app's settings and port.
        let (settings, port) = match (settings, port) {
            (Some(settings), PortChoice::Set(port)) => (settings, Some(port)),
            (None, _) | (_, PortChoice::Keep) => {
                let current = self.registry.snapshot().app(name).cloned();
                (
                    current.map(|d| d.declared.clone()).unwrap_or_default(),
                    None,
                )
            }
        };
        match self
            .deployments
            .deploy(name, source, settings, port, who)
            .await
        {
            Ok(changed) => changed_reply(&changed),
            Err(refused) => change_error(refused),
        }
    }

    async fn versions(&self, name: &str) -> AdminResponse {
        let Some(store) = self.deployments.store.clone() else {
            return error(
                StatusCode::NOT_FOUND,
                "this server keeps no registry (no data directory)",
            );
        };
        let app = name.to_string();
        let listed = tokio::task::spawn_blocking(move || store.versions(&app)).await;
        match listed {
            Ok(Ok(versions)) => {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|record| {
                        json!({
                            "version": record.number,
                            "active": record.active,
                            "deployed_at_ms": record.deployed_at_ms,
                            "deployed_by": record.deployed_by,
                            "origin": record.origin.as_str(),
                            "rolled_back_from": record.rolled_back_from,
                            "bundle_sha256": record.bundle_sha256,
                            "bundle_bytes": record.bundle_size,
                            "manifest": without_secret_values(&record.manifest),
                        })
                    })
                    .collect();
                reply(StatusCode::OK, json!({ "app": name, "versions": versions }))
            }
            Ok(Err(failed)) => change_error(failed.into()),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the registry task failed",
            ),
        }
    }

    async fn rollback(&self, name: &str, who: &str, request: Request<Incoming>) -> AdminResponse {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct Rollback {
            version: Option<u64>,
        }
        let body = match read_body(request, MAX_CALL_BYTES).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        let target: Rollback = if body.iter().all(u8::is_ascii_whitespace) {
            Rollback::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(target) => target,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid rollback: {e}")),
            }
        };
        match self.deployments.rollback(name, target.version, who).await {
            Ok(changed) => changed_reply(&changed),
            Err(refused) => change_error(refused),
        }
    }

    async fn set_vars(&self, name: &str, who: &str, request: Request<Incoming>) -> AdminResponse {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Vars {
            #[serde(default)]
            vars: std::collections::BTreeMap<String, Option<String>>,
            #[serde(default)]
            secrets: std::collections::BTreeMap<String, Option<String>>,
        }
        let body = match read_body(request, MAX_CALL_BYTES).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        let change: Vars = match serde_json::from_slice(&body) {
            Ok(change) => change,
            // serde's message never quotes a value, only a key or a type.
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid vars: {e}")),
        };
        let changed = self
            .deployments
            .set_vars(
                name,
                change.vars.into_iter().collect(),
                change.secrets.into_iter().collect(),
                who,
            )
            .await;
        match changed {
            Ok(changed) => changed_reply(&changed),
            Err(refused) => change_error(refused),
        }
    }

    fn logs(&self, name: &str, request: &Request<Incoming>) -> AdminResponse {
        let Some(tail) = &self.log_tail else {
            return error(StatusCode::NOT_FOUND, "this server keeps no app logs");
        };
        let follow = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "follow=1" || p == "follow=true"));
        let sse = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        let frame = move |line: &str| -> Bytes {
            if sse {
                Bytes::from(format!("data: {line}\n\n"))
            } else {
                Bytes::from(format!("{line}\n"))
            }
        };
        let content_type = if sse {
            "text/event-stream"
        } else {
            "application/x-ndjson"
        };
        let body: AdminBody = if follow {
            let (recent, following) = tail.follow(name);
            let head: Vec<Bytes> = recent.iter().map(|line| frame(line)).collect();
            let live = futures::stream::unfold(following, move |mut following| async move {
                use tokio::sync::broadcast::error::RecvError;
                let chunk = match following.records.recv().await {
                    Ok(line) => frame(&line),
                    Err(RecvError::Lagged(missed)) => {
                        frame(&json!({ "missed_records": missed }).to_string())
                    }
                    Err(RecvError::Closed) => return None,
                };
                Some((chunk, following))
            });
            let stream = futures::stream::StreamExt::map(
                futures::stream::StreamExt::chain(futures::stream::iter(head), live),
                |chunk| Ok::<_, std::convert::Infallible>(Frame::data(chunk)),
            );
            BodyExt::boxed(StreamBody::new(stream))
        } else {
            let text: Vec<u8> = tail
                .recent(name)
                .iter()
                .flat_map(|line| frame(line).to_vec())
                .collect();
            full(Bytes::from(text))
        };
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        response
    }
}

/// D1 database `name` as SQL text (`d1 export`), made off the admin
/// thread's runtime.
async fn export_d1(store: Arc<isopod_store::Storage>, name: String) -> AdminResponse {
    let exported = tokio::task::spawn_blocking(move || {
        let mut sql = Vec::new();
        store.export_d1(&name, &mut sql).map(|()| sql)
    })
    .await;
    match exported {
        Ok(Ok(sql)) => {
            let mut response = Response::new(full(Bytes::from(sql)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/sql"),
            );
            response
        }
        Ok(Err(isopod_store::StorageError::NotFound { .. })) => {
            error(StatusCode::NOT_FOUND, "no such D1 database")
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the export failed"),
    }
}

async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, AdminResponse> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is at most {limit} bytes"),
        )),
    }
}

fn changed_reply(changed: &Changed) -> AdminResponse {
    let status = if changed.before.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let now = &changed.now;
    reply(
        status,
        json!({
            "app": now.version.app(),
            "version": now.version.id.to_string(),
            "number": now.record.as_ref().map(|r| r.number),
            "snapshot": snapshot_state(&now.version),
            "code_cache": code_cache_state(&now.version.bundle),
        }),
    )
}

/// A version's snapshot as the admin API shows it: `made` (with its size),
/// `none` (with why), or `pending` while it is being made.
fn snapshot_state(version: &isopod_pool::AppVersion) -> Value {
    match version.snapshot() {
        None => json!({ "state": "pending" }),
        Some(Ok(snapshot)) => json!({ "state": "made", "bytes": snapshot.len() }),
        Some(Err(why)) => json!({ "state": "none", "why": why.to_string() }),
    }
}

/// The version's code cache as its instances loaded from source see it:
/// its size, whether it was made after a request ran (so it holds the
/// functions execution compiled), and how often V8 took or refused it.
fn code_cache_state(bundle: &isopod_runtime::Bundle) -> Value {
    json!({
        "bytes": bundle.code_cache_len(),
        "after_execution": bundle.code_cache_after_execution(),
        "offers": bundle.code_cache_uses(),
        "rejections": bundle.code_cache_rejections(),
    })
}

fn change_error(refused: ChangeError) -> AdminResponse {
    let status = match &refused {
        ChangeError::Refused(_) => StatusCode::BAD_REQUEST,
        ChangeError::NotFound(_) => StatusCode::NOT_FOUND,
        ChangeError::Conflict(_) => StatusCode::CONFLICT,
        ChangeError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &refused.to_string())
}

/// A stored manifest with each secret's value replaced by `"(secret)"`.
fn without_secret_values(manifest: &Value) -> Value {
    let mut shown = manifest.clone();
    if let Some(Value::Object(secrets)) = shown.get_mut("secrets") {
        for value in secrets.values_mut() {
            *value = Value::String("(secret)".into());
        }
    }
    shown
}

/// What a deploy says about the app's own port.
enum PortChoice {
    /// Nothing (a bare bundle): the app keeps the port it had.
    Keep,
    /// A manifest's `port`, or none when it has no such key.
    Set(Option<u16>),
}

/// A deploy's body: a bare bundle (no settings), or a JSON manifest
/// `{"bundle": …}` with an optional `port` and the [`AppSettings`] keys
/// beside it.
fn parse_body(
    body: &[u8],
    is_json: bool,
) -> Result<(String, Option<AppSettings>, PortChoice), String> {
    if !is_json {
        let source = String::from_utf8(body.to_vec())
            .map_err(|_| "the bundle is not UTF-8 text".to_string())?;
        return Ok((source, None, PortChoice::Keep));
    }
    let invalid = |e: &dyn std::fmt::Display| format!("invalid manifest: {e}");
    let mut manifest: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| invalid(&e))?;
    let source = match manifest.remove("bundle") {
        Some(Value::String(source)) => source,
        Some(_) => return Err(invalid(&"`bundle` must be a string")),
        None => return Err(invalid(&"missing field `bundle`")),
    };
    let port = match manifest.remove("port") {
        None | Some(Value::Null) => None,
        Some(port) => match port.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(port) if port > 0 => Some(port),
            _ => return Err(invalid(&"`port` must be a port number (1-65535)")),
        },
    };
    let settings = AppSettings::deserialize(Value::Object(manifest)).map_err(|e| invalid(&e))?;
    Ok((source, Some(settings), PortChoice::Set(port)))
}

fn describe(deployed: &Deployed) -> Value {
    let version = &deployed.version;
    let routes: Vec<Value> = deployed
        .routes
        .iter()
        .map(|r| {
            json!({
                "host": r.host.as_ref().map(|h| match h {
                    HostPattern::Exact(host) => host.clone(),
                    HostPattern::Wildcard(suffix) => format!("*{suffix}"),
                }),
                "path": r.path,
            })
        })
        .collect();
    json!({
        "name": version.app(),
        "version": version.id.to_string(),
        "number": deployed.record.as_ref().map(|r| r.number),
        "deployed_at_ms": deployed.record.as_ref().map(|r| r.deployed_at_ms),
        "deployed_by": deployed.record.as_ref().map(|r| r.deployed_by.clone()),
        "mode": version.mode,
        "routes": routes,
        "port": deployed.port,
        "vars": deployed.declared.vars.keys().collect::<Vec<_>>(),
        "secrets": deployed.secret_names,
        "allow_net": version.config.net.allowed(),
        "snapshot": snapshot_state(version),
        "code_cache": code_cache_state(&version.bundle),
    })
}

fn full(bytes: Bytes) -> AdminBody {
    BodyExt::boxed(Full::new(bytes))
}

pub(crate) fn reply(status: StatusCode, body: Value) -> AdminResponse {
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn error(status: StatusCode, reason: &str) -> AdminResponse {
    reply(status, json!({ "error": reason }))
}
