//! D1: SQLite databases for apps, behind the calls of Cloudflare's
//! `D1Database` binding (`prepare`/`bind`/`all`/`first`/`run`/`raw`,
//! `batch`, `exec`), with D1's type mapping, result shape, `meta` and
//! error messages.
//!
//! Each database is a file of its own (`d1/<name>.sqlite3` under the data
//! directory, see [`crate::Storage`]) with one thread running its calls
//! (its `engine` module holds the guards: authorizer, time limit, result cap,
//! limits). The API is async: a call is sent to the thread and its future
//! resolves with the answer.
//!
//! Invariants:
//! - A call (one statement, a batch, an `exec`) is one transaction: it
//!   succeeds whole or leaves the database as it was.
//! - An app's SQL can reach only its own database file: ATTACH, VACUUM
//!   INTO and extensions are refused, names are data.
//! - No statement runs past [`D1Options::time_limit`], and no call returns
//!   more than [`D1Options::max_result_bytes`] of rows.
//!
//! `meta` is what miniflare's D1 returns: `served_by`, `duration` (ms),
//! `changes`, `last_row_id`, `changed_db`, `size_after`, `rows_read`,
//! `rows_written`. Stock SQLite does not count rows read and written as
//! D1's SQLite (libSQL) does, so: `rows_written` is the rows changed
//! (`total_changes` across the statement, triggers included; D1 also
//! counts index writes), and `rows_read` is, per statement, the larger of
//! the rows it returned and the rows its full scans visited
//! (`SQLITE_STMTSTATUS_FULLSCAN_STEP` plus one); rows reached through an
//! index without being returned are not counted, nor is the single row of
//! a one-row table scanned without returning it.

mod engine;
mod error;
pub(crate) mod export;
#[cfg(test)]
mod tests;
mod value;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use tokio::sync::oneshot;

pub use engine::SERVED_BY;
pub use error::{D1Error, NO_STATEMENTS, PARAMS_NOT_LAST, WRONG_BINDING_COUNT};
pub use export::VIRTUAL_TABLES;
pub use value::Value;

use crate::storage_error::StorageError;
use engine::{Engine, Job, Output, Query};

/// How a D1 database behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct D1Options {
    /// How long one statement may run before it is interrupted (D1: 30 s).
    pub time_limit: Duration,
    /// The most bytes of rows one call may return (D1: 50 MB).
    pub max_result_bytes: usize,
}

impl Default for D1Options {
    fn default() -> Self {
        D1Options {
            time_limit: Duration::from_secs(30),
            max_result_bytes: 50 * 1000 * 1000,
        }
    }
}

/// A result's `meta`, as miniflare's D1 returns it (see the module doc for
/// how rows are counted).
#[derive(Debug, Clone, PartialEq)]
pub struct D1Meta {
    /// What served the query: [`SERVED_BY`].
    pub served_by: &'static str,
    /// How long the query took, in milliseconds.
    pub duration: f64,
    /// Rows inserted, updated or deleted (triggers included).
    pub changes: u64,
    /// The rowid of the last row inserted on this database (as SQLite
    /// keeps it: an earlier call's when this one inserted none).
    pub last_row_id: i64,
    /// Whether the query changed the database.
    pub changed_db: bool,
    /// The database's size in bytes after the query.
    pub size_after: u64,
    /// Rows read (see the module doc).
    pub rows_read: u64,
    /// Rows written (see the module doc).
    pub rows_written: u64,
}

/// A row: its columns in order, each with its value. Columns are shared by
/// every row of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// The column names, in order (a name may repeat, as in SQL).
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The value of column `name`: the last one so named, as a JS object
    /// built from the row keeps the last.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.columns
            .iter()
            .rposition(|column| column == name)
            .and_then(|index| self.values.get(index))
    }

    /// (column, value) pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.columns
            .iter()
            .map(String::as_str)
            .zip(self.values.iter())
    }

    /// The values, by move.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }
}

/// What `all()` and each element of `batch()` resolve to.
#[derive(Debug, Clone, PartialEq)]
pub struct D1Result {
    /// The rows of the (last) statement.
    pub results: Vec<Row>,
    /// The query's `meta`.
    pub meta: D1Meta,
    /// Always true: a failure is a [`D1Error`].
    pub success: bool,
}

/// What `run()` resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct D1Response {
    /// The query's `meta`.
    pub meta: D1Meta,
    /// Always true: a failure is a [`D1Error`].
    pub success: bool,
}

/// What `exec()` resolves to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct D1ExecResult {
    /// How many queries (non-blank lines) ran.
    pub count: usize,
    /// Their total duration, in milliseconds.
    pub duration: f64,
}

/// A D1 database: what `env.BINDING` of a D1 binding wraps. Cheap to
/// clone; clones share the database's thread.
#[derive(Clone)]
pub struct D1Database {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    path: PathBuf,
    /// `Some` until drop; taking it ends the database's thread.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl std::fmt::Debug for D1Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("D1Database")
            .field("name", &self.inner.name)
            .field("path", &self.inner.path)
            .finish()
    }
}

impl D1Database {
    /// Opens (creating if needed) the database file at `path`, naming it
    /// `name`, and starts its thread. [`crate::Storage::d1_database`] is
    /// the usual way in: it places and names the file, and shares handles.
    pub fn open(name: &str, path: &Path, options: D1Options) -> Result<D1Database, StorageError> {
        let engine = Engine::open(path, options)?;
        let (jobs, queue) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("isopod-d1-{name}"))
            .spawn(move || engine::run(engine, queue))
            .map_err(|source| StorageError::Io {
                context: "starting the thread of",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(D1Database {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                path: path.to_path_buf(),
                jobs: Some(jobs),
                thread: Some(thread),
            }),
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many handles share this database (clones count).
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Runs `f` on the database's thread.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> T + Send + 'static,
    ) -> Result<T, D1Error> {
        let gone = || D1Error::Internal {
            detail: format!("the thread of D1 database '{}' is gone", self.inner.name),
        };
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |engine| {
            let _ = reply.send(f(engine));
        });
        self.inner
            .jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    /// `prepare(sql)`: a statement with no values bound yet.
    pub fn prepare(&self, sql: impl Into<String>) -> D1Statement {
        D1Statement {
            db: self.clone(),
            sql: Arc::from(sql.into()),
            params: Vec::new(),
        }
    }

    /// `batch([statements])`: runs them in order in one transaction and
    /// resolves to each one's result; if one fails, none is kept and the
    /// batch fails with its error.
    pub async fn batch(&self, statements: &[D1Statement]) -> Result<Vec<D1Result>, D1Error> {
        let queries: Vec<Query> = statements.iter().map(D1Statement::query).collect();
        let outputs = self
            .run(move |engine| engine.batch(&queries, true))
            .await?
            .map_err(D1Error::Query)?;
        Ok(outputs.into_iter().map(to_result).collect())
    }

    /// `exec(sql)`: runs SQL without bindings, as D1 does: the text is
    /// trimmed and split at newlines, and each line runs as one query (it
    /// may hold several `;`-separated statements; a statement spanning
    /// lines fails, as on D1). All lines run in one transaction.
    pub async fn exec(&self, sql: &str) -> Result<D1ExecResult, D1Error> {
        let sql = sql.to_owned();
        let (count, duration) = self.run(move |engine| engine.exec(&sql)).await??;
        Ok(D1ExecResult { count, duration })
    }
}

fn to_result(output: Output) -> D1Result {
    let columns = output.columns;
    D1Result {
        results: output
            .rows
            .into_iter()
            .map(|values| Row {
                columns: columns.clone(),
                values,
            })
            .collect(),
        meta: output.meta,
        success: true,
    }
}

/// A prepared statement: SQL and the values bound to it. Binding makes a
/// new statement, as in D1; running does not consume it.
#[derive(Debug, Clone)]
pub struct D1Statement {
    db: D1Database,
    sql: Arc<str>,
    params: Vec<Value>,
}

impl D1Statement {
    /// The SQL.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The values bound.
    pub fn params(&self) -> &[Value] {
        &self.params
    }

    /// `bind(...values)`: this statement with `values` bound to its
    /// parameters in order (`?` and `?NNN` by position), replacing any
    /// bound before.
    pub fn bind(&self, values: impl IntoIterator<Item = Value>) -> D1Statement {
        D1Statement {
            db: self.db.clone(),
            sql: self.sql.clone(),
            params: values.into_iter().collect(),
        }
    }

    fn query(&self) -> Query {
        Query {
            sql: self.sql.clone(),
            params: self.params.clone(),
        }
    }

    async fn one(&self, keep_rows: bool) -> Result<Output, D1Error> {
        let query = self.query();
        let mut outputs = self
            .db
            .run(move |engine| engine.batch(std::slice::from_ref(&query), keep_rows))
            .await?
            .map_err(D1Error::Query)?;
        outputs.pop().ok_or_else(|| D1Error::Internal {
            detail: "a statement produced no result".into(),
        })
    }

    /// `all()`: every row, with `meta`.
    pub async fn all(&self) -> Result<D1Result, D1Error> {
        self.one(true).await.map(to_result)
    }

    /// `first()`: the first row, if any.
    pub async fn first(&self) -> Result<Option<Row>, D1Error> {
        Ok(self.all().await?.results.into_iter().next())
    }

    /// `first(column)`: that column of the first row; `None` when there is
    /// no row, [`D1Error::ColumnNotFound`] when the row has no such column.
    pub async fn first_column(&self, column: &str) -> Result<Option<Value>, D1Error> {
        let Some(row) = self.first().await? else {
            return Ok(None);
        };
        row.get(column)
            .cloned()
            .map(Some)
            .ok_or_else(|| D1Error::ColumnNotFound(column.to_owned()))
    }

    /// `run()`: runs the statement for its effect; `meta` only.
    pub async fn run(&self) -> Result<D1Response, D1Error> {
        let output = self.one(false).await?;
        Ok(D1Response {
            meta: output.meta,
            success: true,
        })
    }

    /// `raw({columnNames})`: rows as arrays of values, preceded by a row of
    /// the column names (as text values) when `column_names` is true.
    pub async fn raw(&self, column_names: bool) -> Result<Vec<Vec<Value>>, D1Error> {
        let output = self.one(true).await?;
        let mut rows = Vec::with_capacity(output.rows.len() + 1);
        if column_names {
            rows.push(output.columns.iter().cloned().map(Value::Text).collect());
        }
        rows.extend(output.rows);
        Ok(rows)
    }
}
