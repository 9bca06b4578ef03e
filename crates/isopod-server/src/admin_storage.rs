//! The admin API's view of apps' storage, for operators: an app's KV
//! namespace (list, read, write, delete a key) and D1 database (a query,
//! an export as SQL), reached through the app's own binding, so an
//! operator sees what the app sees.
//!
//! - `GET /apps/NAME/kv/BINDING?prefix=&limit=&cursor=`: a page of keys.
//! - `GET`, `PUT`, `DELETE /apps/NAME/kv/BINDING/KEY` (the key
//!   percent-encoded; it may hold `/`): the value (as text when it is
//!   UTF-8, else base64) with its metadata and expiration; a new value (the
//!   body, with `?expiration_ttl=`, `?expiration=`, `?metadata=` JSON); none.
//! - `POST /apps/NAME/d1/BINDING/query` with `{"sql": "...", "params":
//!   [...]}`: the rows and D1's `meta`.
//! - `GET /apps/NAME/d1/BINDING/export`: the database as SQL text.
//!
//! The same limits and checks as the binding (the store applies them); a
//! store failure is a 4xx with the store's message when the caller's input
//! caused it, a 500 otherwise.

use bytes::Bytes;
use http::StatusCode;
use isopod_bindings::BindingTarget;
use isopod_store::d1::{D1Database, Row, Value as D1Value};
use isopod_store::kv::{KvError, KvNamespace, ListOptions, PutOptions};
use serde_json::{json, Map, Value};

use crate::admin::{error, reply, AdminResponse};
use crate::registry::Snapshot;

/// Why a call is refused: its status and reason, made a response by
/// [`Refusal::respond`].
pub(crate) struct Refusal(StatusCode, String);

impl Refusal {
    /// The admin API's answer for it.
    pub(crate) fn respond(self) -> AdminResponse {
        error(self.0, &self.1)
    }
}

/// The target of app `name`'s binding `binding`, or the 404 that says why
/// there is none.
pub(crate) fn binding_target(
    snapshot: &Snapshot,
    name: &str,
    binding: &str,
) -> Result<BindingTarget, Refusal> {
    let Some(deployed) = snapshot.app(name) else {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("no app named '{name}'"),
        ));
    };
    deployed
        .version
        .config
        .bindings
        .entries()
        .iter()
        .find(|entry| entry.name == binding)
        .map(|entry| entry.target.clone())
        .ok_or_else(|| {
            Refusal(
                StatusCode::NOT_FOUND,
                format!("app '{name}' has no binding '{binding}'"),
            )
        })
}

/// The KV namespace behind a binding, or a 400 when it is a D1 database.
pub(crate) fn kv(target: BindingTarget) -> Result<KvNamespace, Refusal> {
    match target {
        BindingTarget::Kv(namespace) => Ok(namespace),
        BindingTarget::D1(_) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            "this binding is a D1 database".into(),
        )),
    }
}

/// The D1 database behind a binding, or a 400 when it is a KV namespace.
pub(crate) fn d1(target: BindingTarget) -> Result<D1Database, Refusal> {
    match target {
        BindingTarget::D1(database) => Ok(database),
        BindingTarget::Kv(_) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            "this binding is a KV namespace".into(),
        )),
    }
}

fn kv_failure(failure: KvError) -> AdminResponse {
    let status = match &failure {
        KvError::InvalidKeyName(_) | KvError::Rejected { .. } => StatusCode::BAD_REQUEST,
        KvError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &failure.to_string())
}

/// The query string's `key`, percent-decoded.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(name, _)| *name == key)
        .map(|(_, value)| decode(&value.replace('+', " ")))
}

/// Percent-decodes `text` (a key in a path or a query value).
pub(crate) fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// A page of the namespace's keys.
pub(crate) async fn list(namespace: KvNamespace, query: Option<&str>) -> AdminResponse {
    let options = ListOptions {
        prefix: query_param(query, "prefix"),
        limit: query_param(query, "limit").and_then(|limit| limit.parse().ok()),
        cursor: query_param(query, "cursor"),
    };
    match namespace.list(options).await {
        Ok(page) => {
            let keys: Vec<Value> = page
                .keys
                .into_iter()
                .map(|key| {
                    json!({
                        "name": key.name,
                        "expiration": key.expiration,
                        "metadata": key.metadata.as_deref().map(metadata_value),
                    })
                })
                .collect();
            reply(
                StatusCode::OK,
                json!({ "keys": keys, "list_complete": page.list_complete, "cursor": page.cursor }),
            )
        }
        Err(failure) => kv_failure(failure),
    }
}

fn metadata_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// One key's value, metadata and expiration.
pub(crate) async fn get(namespace: KvNamespace, key: &str) -> AdminResponse {
    match namespace.get(key).await {
        Ok(None) => error(StatusCode::NOT_FOUND, &format!("no key '{key}'")),
        Ok(Some(entry)) => {
            let mut shown = Map::new();
            shown.insert("key".into(), json!(key));
            match String::from_utf8(entry.value) {
                Ok(text) => shown.insert("value".into(), json!(text)),
                Err(bytes) => {
                    use base64::Engine as _;
                    let encoded =
                        base64::engine::general_purpose::STANDARD.encode(bytes.into_bytes());
                    shown.insert("value_base64".into(), json!(encoded))
                }
            };
            shown.insert(
                "metadata".into(),
                entry
                    .metadata
                    .as_deref()
                    .map_or(Value::Null, metadata_value),
            );
            shown.insert("expiration".into(), json!(entry.expiration));
            reply(StatusCode::OK, Value::Object(shown))
        }
        Err(failure) => kv_failure(failure),
    }
}

/// Writes `value` under `key`, with the query's options.
pub(crate) async fn put(
    namespace: KvNamespace,
    key: &str,
    value: Bytes,
    query: Option<&str>,
) -> AdminResponse {
    let number = |name: &str| -> Result<Option<i64>, Refusal> {
        query_param(query, name)
            .map(|text| {
                text.parse().map_err(|_| {
                    Refusal(
                        StatusCode::BAD_REQUEST,
                        format!("`{name}` must be a whole number of seconds"),
                    )
                })
            })
            .transpose()
    };
    let (expiration, expiration_ttl) = match (number("expiration"), number("expiration_ttl")) {
        (Ok(expiration), Ok(ttl)) => (expiration, ttl),
        (Err(refused), _) | (_, Err(refused)) => return refused.respond(),
    };
    let metadata = query_param(query, "metadata");
    if let Some(text) = &metadata {
        if serde_json::from_str::<Value>(text).is_err() {
            return error(StatusCode::BAD_REQUEST, "`metadata` must be JSON");
        }
    }
    let options = PutOptions {
        expiration,
        expiration_ttl,
        metadata,
    };
    match namespace.put(key, value.to_vec(), options).await {
        Ok(()) => reply(StatusCode::OK, json!({ "key": key, "stored": value.len() })),
        Err(failure) => kv_failure(failure),
    }
}

/// Deletes `key` (a key that is not there is no error, as in Workers).
pub(crate) async fn delete(namespace: KvNamespace, key: &str) -> AdminResponse {
    match namespace.delete(key).await {
        Ok(()) => reply(StatusCode::OK, json!({ "key": key, "deleted": true })),
        Err(failure) => kv_failure(failure),
    }
}

/// A D1 query from its JSON body: `{"sql": "...", "params": [...]}`.
pub(crate) async fn query(database: D1Database, body: &[u8]) -> AdminResponse {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Query {
        sql: String,
        #[serde(default)]
        params: Vec<Value>,
    }
    let query: Query = match serde_json::from_slice(body) {
        Ok(query) => query,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid query: {e} (expected {{\"sql\": \"...\", \"params\": [...]}})"),
            )
        }
    };
    let mut params = Vec::with_capacity(query.params.len());
    for param in query.params {
        params.push(match param {
            Value::Null => D1Value::Null,
            Value::Bool(b) => D1Value::from(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => D1Value::Integer(i),
                None => D1Value::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => D1Value::Text(s),
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "a parameter must be null, a boolean, a number or a string, not {other}"
                    ),
                )
            }
        });
    }
    let statement = database.prepare(query.sql).bind(params);
    match statement.all().await {
        Ok(result) => {
            let rows: Vec<Value> = result.results.iter().map(row_object).collect();
            let meta = &result.meta;
            reply(
                StatusCode::OK,
                json!({
                    "results": rows,
                    "meta": {
                        "duration": meta.duration,
                        "changes": meta.changes,
                        "last_row_id": meta.last_row_id,
                        "rows_read": meta.rows_read,
                        "rows_written": meta.rows_written,
                        "size_after": meta.size_after,
                    },
                }),
            )
        }
        Err(failure) => error(StatusCode::BAD_REQUEST, &failure.to_string()),
    }
}

fn row_object(row: &Row) -> Value {
    let mut object = Map::new();
    for (column, value) in row.iter() {
        let shown = match value {
            D1Value::Null => Value::Null,
            D1Value::Integer(i) => json!(i),
            D1Value::Real(r) => json!(r),
            D1Value::Text(s) => json!(s),
            D1Value::Blob(b) => json!(b),
        };
        object.insert(column.to_string(), shown);
    }
    Value::Object(object)
}

/// Every KV namespace and D1 database the server keeps, whether or not an
/// app names it.
pub(crate) async fn inventory(storage: &isopod_store::Storage) -> AdminResponse {
    let kv = match storage.kv_namespaces().await {
        Ok(kv) => kv,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let d1 = match storage.d1_databases() {
        Ok(d1) => d1,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let kv: Vec<Value> = kv
        .into_iter()
        .map(|(backend, name)| json!({ "backend": backend.as_str(), "name": name }))
        .collect();
    reply(StatusCode::OK, json!({ "kv": kv, "d1": d1 }))
}

/// Whether a live app names KV namespace `name` on `backend` or D1
/// database `name`: such storage is not deleted.
pub(crate) fn in_use(snapshot: &Snapshot, kind: &str, backend: &str, name: &str) -> Option<String> {
    snapshot.apps().find_map(|deployed| {
        deployed
            .version
            .config
            .bindings
            .entries()
            .iter()
            .any(|binding| match &binding.target {
                BindingTarget::Kv(namespace) => {
                    kind == "kv"
                        && namespace.backend().as_str() == backend
                        && namespace.name() == name
                }
                BindingTarget::D1(database) => kind == "d1" && database.name() == name,
            })
            .then(|| deployed.version.app().to_string())
    })
}

/// Deletes a KV namespace (`kv`, with its backend) or a D1 database (`d1`)
/// that no live app names.
pub(crate) async fn drop_storage(
    storage: std::sync::Arc<isopod_store::Storage>,
    snapshot: &Snapshot,
    kind: &str,
    backend: &str,
    name: &str,
) -> AdminResponse {
    if let Some(app) = in_use(snapshot, kind, backend, name) {
        return error(
            StatusCode::CONFLICT,
            &format!("app '{app}' binds it: remove the binding first"),
        );
    }
    let deleted = match kind {
        "kv" => {
            let backend = match backend {
                "sqlite" => isopod_store::kv::KvBackend::Sqlite,
                "redis" => isopod_store::kv::KvBackend::Redis,
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown KV backend '{other}' (sqlite or redis)"),
                    )
                }
            };
            storage.delete_kv_namespace(name, backend).await
        }
        _ => {
            let name = name.to_string();
            match tokio::task::spawn_blocking(move || storage.delete_d1_database(&name)).await {
                Ok(deleted) => deleted,
                Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the delete failed"),
            }
        }
    };
    match deleted {
        Ok(true) => reply(StatusCode::OK, json!({ "deleted": name })),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            &format!("no {kind} storage named '{name}'"),
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Copies the SQLite KV file and every D1 database into directory `to`
/// (created) with SQLite's online backup, while they stay in use: each
/// copy is consistent on its own.
pub(crate) async fn backup(
    storage: std::sync::Arc<isopod_store::Storage>,
    body: &[u8],
) -> AdminResponse {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Backup {
        to: std::path::PathBuf,
    }
    let request: Backup = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid backup request: {e} (expected {{\"to\": \"/a/directory\"}})"),
            )
        }
    };
    let copied = tokio::task::spawn_blocking(move || {
        let to = request.to;
        std::fs::create_dir_all(to.join(isopod_store::D1_DIR_NAME))
            .map_err(|e| format!("cannot create {}: {e}", to.display()))?;
        let mut files = Vec::new();
        let kv = to.join(isopod_store::kv::KV_FILE_NAME);
        storage.backup_kv(&kv).map_err(|e| e.to_string())?;
        files.push(kv.display().to_string());
        for name in storage.d1_databases().map_err(|e| e.to_string())? {
            let file = to
                .join(isopod_store::D1_DIR_NAME)
                .join(format!("{name}.sqlite3"));
            storage.backup_d1(&name, &file).map_err(|e| e.to_string())?;
            files.push(file.display().to_string());
        }
        Ok::<_, String>(files)
    })
    .await;
    match copied {
        Ok(Ok(files)) => reply(StatusCode::OK, json!({ "copied": files })),
        Ok(Err(reason)) => error(StatusCode::INTERNAL_SERVER_ERROR, &reason),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the backup failed"),
    }
}
