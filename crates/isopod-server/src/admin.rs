//! The admin API, on its own listener and thread.
//!
//! Every call needs `Authorization: Bearer TOKEN` (compared in constant
//! time; 401 otherwise) except `GET /healthz`.
//!
//! - `PUT /apps/NAME`: deploy or hot-swap. The body is a bare bundle, or (with
//!   `content-type: application/json`) a manifest `{ "bundle": "…",
//!   "routes": [{ "host": "…", "path": "…" }], "vars": {…}, "mode": "pooled" |
//!   "isolate-per-request", "limits": { "cpu_ms": 50, … } }`. The bundle is evaluated in a scratch isolate
//!   "isolate-per-request", "allow_net": ["127.0.0.1:9000", "10.1.0.0/16",
//!   "api.internal"] }` (`allow_net`: the non-public hosts and ranges the
//!   app's `fetch` may reach besides public addresses; a bad entry is a
//!   400). The bundle is evaluated in a scratch isolate
//!   under the startup budget first; a broken one answers 400 with the error
//!   and its file:line, and the running version keeps serving.
//! - `GET /apps`, `GET /apps/NAME`, `DELETE /apps/NAME`.
//! - `GET /admin/pool`: the pool's statistics.

use std::net::TcpListener;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use isopod_pool::{AppVersion, Pool};
use isopod_runtime::{Bundle, Limits};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::accept::serve_own_port;
use crate::deploy_check::check_bundle;
use crate::manifest::{check_app_name, AppSettings};
use crate::ports::OwnPorts;
use crate::registry::{Deployed, Registry};
use crate::routing::HostPattern;

/// The largest bundle or manifest `PUT /apps/NAME` accepts.
const MAX_DEPLOY_BYTES: usize = 64 * 1024 * 1024;

/// What the admin API needs.
pub(crate) struct Admin {
    pub(crate) token: Arc<str>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) pool: Arc<Pool>,
    /// Apps' own ports: a deploy may open or move one.
    pub(crate) ports: Arc<OwnPorts>,
    /// The process's default limits, which a manifest's `limits` override.
    pub(crate) default_limits: Limits,
    /// The HTTP/1.1 stack of apps' own ports opened by a deploy.
    pub(crate) http1: crate::listener::Http1Path,
}

type AdminResponse = Response<Full<Bytes>>;

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
            return reply(StatusCode::OK, json!({ "status": "ok" }));
        }
        if !self.authorized(&request) {
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (request.method().clone(), segments.as_slice()) {
            (Method::GET, ["apps"]) => self.list(),
            (Method::GET, ["apps", name]) => self.show(name).await,
            (Method::PUT, ["apps", name]) => {
                let name = name.to_string();
                self.deploy(&name, request).await
            }
            (Method::DELETE, ["apps", name]) => self.remove(name).await,
            (Method::GET, ["admin", "pool"]) => {
                reply(StatusCode::OK, json!(self.pool.stats().await))
            }
            (Method::GET, ["metrics"]) => self.metrics().await,
            (_, ["apps"] | ["apps", _] | ["admin", "pool"] | ["metrics"]) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
            }
            _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(given) = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        bool::from(given.as_bytes().ct_eq(self.token.as_bytes()))
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

    /// `GET /metrics`: the pool and each app's kills, for Prometheus.
    async fn metrics(&self) -> AdminResponse {
        let stats = self.pool.stats().await;
        let kills: Vec<(String, isopod_pool::AppKills)> = self
            .registry
            .snapshot()
            .apps()
            .map(|deployed| {
                let app = deployed.version.app().to_string();
                let kills = self.pool.kills(&app);
                (app, kills)
            })
            .collect();
        let mut response = Response::new(Full::new(Bytes::from(crate::metrics::render(
            &stats, &kills,
        ))));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    async fn remove(&self, name: &str) -> AdminResponse {
        match self.registry.remove(name) {
            Some(removed) => {
                if let Some(port) = removed.port {
                    self.ports.close(port).await;
                }
                self.pool.removed(name);
                reply(StatusCode::OK, json!({ "removed": name }))
            }
            None => error(StatusCode::NOT_FOUND, &format!("no app named '{name}'")),
        }
    }

    async fn deploy(&self, name: &str, request: Request<Incoming>) -> AdminResponse {
        if let Err(refused) = check_app_name(name) {
            return error(StatusCode::BAD_REQUEST, &refused.to_string());
        }
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = match Limited::new(request.into_body(), MAX_DEPLOY_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("a deploy is at most {MAX_DEPLOY_BYTES} bytes"),
                )
            }
        };
        let (source, settings, port) = match parse_body(&body, is_json) {
            Ok(parsed) => parsed,
            Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
        };
        let bundle = Bundle::from_source(&format!("{name}.js"), source);
        let manifest = match settings.into_manifest(name, bundle, &self.default_limits) {
            Ok(manifest) => manifest,
            Err(refused) => return error(StatusCode::BAD_REQUEST, &refused.to_string()),
        };
        let previous = self.registry.snapshot().app(name).cloned();
        let (config, bundle) = (manifest.config, manifest.bundle);
        let checked = {
            let (config, bundle) = (config.clone(), bundle.clone());
            tokio::task::spawn_blocking(move || check_bundle(&config, &bundle)).await
        };
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(refused)) => return error(StatusCode::BAD_REQUEST, &refused.to_string()),
            Err(_) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "checking the bundle failed",
                )
            }
        }
        // A JSON manifest states the app's own port (none if absent); a bare
        // bundle keeps the port the app had.
        let previous_port = previous.as_ref().and_then(|p| p.port);
        let port = match port {
            PortChoice::Keep => previous_port,
            PortChoice::Set(port) => port,
        };
        let opened = match port {
            Some(port) if Some(port) != previous_port => {
                match self.ports.bind(&config.name, port, self.pool.workers()) {
                    Ok(bound) => Some(bound),
                    Err(refused) => {
                        return error(StatusCode::BAD_REQUEST, &format!("app '{name}': {refused}"))
                    }
                }
            }
            _ => None,
        };
        let version = AppVersion::new(config, bundle, manifest.mode);
        self.registry
            .deploy(Deployed::new(version.clone(), manifest.routes, port));
        if let Some(bound) = opened {
            serve_own_port(
                &self.pool,
                &self.registry,
                &version.config.name,
                bound,
                self.http1,
            );
            tracing::info!(app = name, port = ?port, "listening on the app's own port");
        }
        if let Some(old) = previous_port.filter(|old| Some(*old) != port) {
            self.ports.close(old).await;
        }
        self.pool.deployed(&version);
        tracing::info!(app = name, version = %version.id, "deployed");
        let status = if previous.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        reply(
            status,
            json!({ "app": name, "version": version.id.to_string() }),
        )
    }
}

/// What a deploy says about the app's own port.
enum PortChoice {
    /// Nothing (a bare bundle): the app keeps the port it had.
    Keep,
    /// A manifest's `port`, or none when it has no such key.
    Set(Option<u16>),
}

/// A deploy's body: a bare bundle, or a JSON manifest `{"bundle": …}` with
/// an optional `port` and the [`AppSettings`] keys beside it.
fn parse_body(body: &[u8], is_json: bool) -> Result<(String, AppSettings, PortChoice), String> {
    if !is_json {
        let source = String::from_utf8(body.to_vec())
            .map_err(|_| "the bundle is not UTF-8 text".to_string())?;
        return Ok((source, AppSettings::default(), PortChoice::Keep));
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
    Ok((source, settings, PortChoice::Set(port)))
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
        "mode": version.mode,
        "routes": routes,
        "port": deployed.port,
        "vars": version.config.vars.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "allow_net": version.config.net.allowed(),
    })
}

fn reply(status: StatusCode, body: Value) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, reason: &str) -> AdminResponse {
    reply(status, json!({ "error": reason }))
}
