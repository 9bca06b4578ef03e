//! The ops behind a D1 binding (`js/d1.js`): a statement's query in one of
//! D1's shapes, a batch, and `exec`, all async.

use std::cell::RefCell;
use std::rc::Rc;

use deno_core::{op2, OpState};
use deno_error::JsErrorBox;
use isopod_store::d1::{D1Database, D1Error, D1Meta, D1Result, D1Statement, Row, Value};
use serde::{Deserialize, Serialize, Serializer};

use crate::BindingTarget;

fn database(state: &Rc<RefCell<OpState>>, binding: u32) -> Result<D1Database, JsErrorBox> {
    crate::target(state, binding, |target| match target {
        BindingTarget::D1(database) => Some(database.clone()),
        BindingTarget::Kv(_) => None,
    })
}

fn thrown(error: D1Error) -> JsErrorBox {
    JsErrorBox::generic(error.to_string())
}

/// A bound value as JavaScript passes it, tagged by `t` (JavaScript has
/// already applied D1's mapping and refused what D1 refuses): 0 null,
/// 1 integer `n`, 2 real `n`, 3 text `s`, 4 blob `b`.
#[derive(Deserialize)]
pub(crate) struct ParamIn {
    t: u8,
    n: Option<f64>,
    s: Option<String>,
    b: Option<Vec<u8>>,
}

impl ParamIn {
    fn into_value(self) -> Value {
        match (self.t, self.n, self.s, self.b) {
            (1, Some(n), _, _) => Value::Integer(n as i64),
            (2, Some(n), _, _) => Value::Real(n),
            (3, _, Some(s), _) => Value::Text(s),
            (4, _, _, Some(b)) => Value::Blob(b),
            _ => Value::Null,
        }
    }
}

/// A row's value as JavaScript receives it: numbers, strings and `null` as
/// themselves, a blob as an array of its bytes (as D1 returns one).
pub(crate) struct ValueOut(Value);

impl Serialize for ValueOut {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Value::Null => serializer.serialize_unit(),
            // D1 hands every integer to JavaScript as a number.
            Value::Integer(i) => serializer.serialize_f64(*i as f64),
            Value::Real(r) => serializer.serialize_f64(*r),
            Value::Text(s) => serializer.serialize_str(s),
            Value::Blob(b) => b.serialize(serializer),
        }
    }
}

/// D1's `meta`, with its field names.
#[derive(Serialize)]
pub(crate) struct MetaOut {
    served_by: &'static str,
    duration: f64,
    changes: f64,
    last_row_id: f64,
    changed_db: bool,
    size_after: f64,
    rows_read: f64,
    rows_written: f64,
}

impl From<&D1Meta> for MetaOut {
    fn from(meta: &D1Meta) -> MetaOut {
        MetaOut {
            served_by: meta.served_by,
            duration: meta.duration,
            changes: meta.changes as f64,
            last_row_id: meta.last_row_id as f64,
            changed_db: meta.changed_db,
            size_after: meta.size_after as f64,
            rows_read: meta.rows_read as f64,
            rows_written: meta.rows_written as f64,
        }
    }
}

/// A query's answer: the columns, the rows as arrays (JavaScript makes
/// objects of them where D1 does), and `meta` where there is one.
#[derive(Serialize, Default)]
pub(crate) struct QueryOut {
    columns: Vec<String>,
    rows: Vec<Vec<ValueOut>>,
    meta: Option<MetaOut>,
}

fn rows_out(rows: Vec<Row>) -> (Vec<String>, Vec<Vec<ValueOut>>) {
    let columns = rows
        .first()
        .map(|row| row.columns().to_vec())
        .unwrap_or_default();
    let rows = rows
        .into_iter()
        .map(|row| row.into_values().into_iter().map(ValueOut).collect())
        .collect();
    (columns, rows)
}

impl From<D1Result> for QueryOut {
    fn from(result: D1Result) -> QueryOut {
        let meta = Some(MetaOut::from(&result.meta));
        let (columns, rows) = rows_out(result.results);
        QueryOut {
            columns,
            rows,
            meta,
        }
    }
}

/// A statement of a batch.
#[derive(Deserialize)]
pub(crate) struct StatementIn {
    sql: String,
    params: Vec<ParamIn>,
}

fn statement(database: &D1Database, sql: String, params: Vec<ParamIn>) -> D1Statement {
    let statement = database.prepare(sql);
    if params.is_empty() {
        return statement;
    }
    statement.bind(params.into_iter().map(ParamIn::into_value))
}

/// Runs one statement the way `mode` says: `all`, `first` (at most one
/// row, no meta), `raw` (every row, the column names first even when there
/// are no rows) or `run` (meta only).
#[op2]
#[serde]
pub(crate) async fn op_isopod_d1_query(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[string] sql: String,
    #[serde] params: Vec<ParamIn>,
    #[string] mode: String,
) -> Result<QueryOut, JsErrorBox> {
    let database = database(&state, binding)?;
    let statement = statement(&database, sql, params);
    match mode.as_str() {
        "first" => {
            let row = statement.first().await.map_err(thrown)?;
            let (columns, rows) = rows_out(row.into_iter().collect());
            Ok(QueryOut {
                columns,
                rows,
                meta: None,
            })
        }
        "raw" => {
            let mut rows = statement.raw(true).await.map_err(thrown)?.into_iter();
            let columns = rows
                .next()
                .unwrap_or_default()
                .into_iter()
                .map(|name| match name {
                    Value::Text(name) => name,
                    _ => String::new(),
                })
                .collect();
            Ok(QueryOut {
                columns,
                rows: rows
                    .map(|row| row.into_iter().map(ValueOut).collect())
                    .collect(),
                meta: None,
            })
        }
        "run" => {
            let response = statement.run().await.map_err(thrown)?;
            Ok(QueryOut {
                meta: Some(MetaOut::from(&response.meta)),
                ..QueryOut::default()
            })
        }
        _ => Ok(statement.all().await.map_err(thrown)?.into()),
    }
}

#[op2]
#[serde]
pub(crate) async fn op_isopod_d1_batch(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[serde] statements: Vec<StatementIn>,
) -> Result<Vec<QueryOut>, JsErrorBox> {
    let database = database(&state, binding)?;
    let statements: Vec<D1Statement> = statements
        .into_iter()
        .map(|s| statement(&database, s.sql, s.params))
        .collect();
    let results = database.batch(&statements).await.map_err(thrown)?;
    Ok(results.into_iter().map(QueryOut::from).collect())
}

/// What `exec` resolves to.
#[derive(Serialize)]
pub(crate) struct ExecOut {
    count: f64,
    duration: f64,
}

#[op2]
#[serde]
pub(crate) async fn op_isopod_d1_exec(
    state: Rc<RefCell<OpState>>,
    #[smi] binding: u32,
    #[string] sql: String,
) -> Result<ExecOut, JsErrorBox> {
    let database = database(&state, binding)?;
    let result = database.exec(&sql).await.map_err(thrown)?;
    Ok(ExecOut {
        count: result.count as f64,
        duration: result.duration,
    })
}
