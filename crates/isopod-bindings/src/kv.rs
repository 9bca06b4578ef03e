//! The ops behind a KV binding (`js/kv.js`): one per store call, async.

use std::cell::RefCell;
use std::rc::Rc;

use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};
use deno_error::JsErrorBox;
use isopod_store::kv::{Entry, JsErrorClass, KvError, KvNamespace, ListOptions, PutOptions};
use serde::{Deserialize, Serialize};

use crate::BindingTarget;

fn namespace(state: &Rc<RefCell<OpState>>, binding: u32) -> Result<KvNamespace, JsErrorBox> {
    crate::target(state, binding, |target| match target {
        BindingTarget::Kv(namespace) => Some(namespace.clone()),
        BindingTarget::D1(_) => None,
    })
}

/// A KV failure as the binding throws it: Workers' class and message.
fn thrown(error: KvError) -> JsErrorBox {
    match error.js_class() {
        JsErrorClass::TypeError => JsErrorBox::type_error(error.to_string()),
        JsErrorClass::Error => JsErrorBox::generic(error.to_string()),
    }
}

/// An entry as JavaScript receives it; it decodes `value` by the type the
/// caller asked for.
#[derive(Serialize)]
pub(crate) struct EntryOut {
    value: ToJsBuffer,
    /// JSON text, parsed in JavaScript.
    metadata: Option<String>,
    expiration: Option<f64>,
}

impl From<Entry> for EntryOut {
    fn from(entry: Entry) -> EntryOut {
        EntryOut {
            value: entry.value.into(),
            metadata: entry.metadata,
            expiration: entry.expiration.map(|at| at as f64),
        }
    }
}

#[op2]
#[serde]
pub(crate) async fn op_isopod_kv_get(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[string] key: String,
) -> Result<Option<EntryOut>, JsErrorBox> {
    let namespace = namespace(&state, binding)?;
    let entry = namespace.get(&key).await.map_err(thrown)?;
    Ok(entry.map(EntryOut::from))
}

#[op2]
#[serde]
pub(crate) async fn op_isopod_kv_get_many(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[serde] keys: Vec<String>,
) -> Result<Vec<(String, Option<EntryOut>)>, JsErrorBox> {
    let namespace = namespace(&state, binding)?;
    let entries = namespace.get_many(&keys).await.map_err(thrown)?;
    Ok(entries
        .into_iter()
        .map(|(key, entry)| (key, entry.map(EntryOut::from)))
        .collect())
}

/// `put`'s options as JavaScript passes them (metadata already JSON text).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PutOptionsIn {
    expiration: Option<f64>,
    expiration_ttl: Option<f64>,
    metadata: Option<String>,
}

#[op2]
pub(crate) async fn op_isopod_kv_put(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[string] key: String,
    #[buffer] value: JsBuffer,
    #[serde] options: PutOptionsIn,
) -> Result<(), JsErrorBox> {
    let namespace = namespace(&state, binding)?;
    let options = PutOptions {
        expiration: options.expiration.map(|at| at as i64),
        expiration_ttl: options.expiration_ttl.map(|ttl| ttl as i64),
        metadata: options.metadata,
    };
    namespace
        .put(&key, value.to_vec(), options)
        .await
        .map_err(thrown)
}

#[op2]
pub(crate) async fn op_isopod_kv_delete(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[string] key: String,
) -> Result<(), JsErrorBox> {
    let namespace = namespace(&state, binding)?;
    namespace.delete(&key).await.map_err(thrown)
}

/// `list`'s options as JavaScript passes them.
#[derive(Deserialize)]
pub(crate) struct ListOptionsIn {
    prefix: Option<String>,
    limit: Option<f64>,
    cursor: Option<String>,
}

/// One key of a page.
#[derive(Serialize)]
pub(crate) struct ListKeyOut {
    name: String,
    expiration: Option<f64>,
    metadata: Option<String>,
}

/// A page of `list`.
#[derive(Serialize)]
pub(crate) struct ListOut {
    keys: Vec<ListKeyOut>,
    list_complete: bool,
    cursor: Option<String>,
}

#[op2]
#[serde]
pub(crate) async fn op_isopod_kv_list(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[serde] options: ListOptionsIn,
) -> Result<ListOut, JsErrorBox> {
    let namespace = namespace(&state, binding)?;
    let options = ListOptions {
        prefix: options.prefix,
        // As workerd: a limit of 0 or less is no limit (the default).
        limit: options.limit.map(|limit| limit as i64).filter(|&l| l > 0),
        cursor: options.cursor.filter(|cursor| !cursor.is_empty()),
    };
    let page = namespace.list(options).await.map_err(thrown)?;
    Ok(ListOut {
        keys: page
            .keys
            .into_iter()
            .map(|key| ListKeyOut {
                name: key.name,
                expiration: key.expiration.map(|at| at as f64),
                metadata: key.metadata,
            })
            .collect(),
        list_complete: page.list_complete,
        cursor: page.cursor,
    })
}
