//! One D1 database's connection, on a thread of its own, with its guards:
//! the authorizer, the time limit, the result cap and SQLite's limits.
//!
//! Every call from an app (a statement, a batch, an `exec`) runs on the
//! database's thread as one transaction, so a failure anywhere in it keeps
//! nothing, and the async side never blocks. D1 itself runs one query at a
//! time per database; so does this.
//!
//! Guards:
//! - An authorizer checks every statement an app prepares (our own
//!   statements run "trusted", past it): no ATTACH or DETACH, no
//!   `load_extension`, no BEGIN/COMMIT/SAVEPOINT (the call's transaction is
//!   ours), no temp objects, only the virtual-table modules D1 offers
//!   (fts5, rtree), and only the pragmas workerd's SQL storage allows
//!   (`ALLOWED_PRAGMAS` in workerd's `src/workerd/util/sqlite.c++`, which
//!   miniflare's D1 runs on): reading schema information, and switching
//!   the few per-connection behaviours D1 lets apps switch (`foreign_keys`,
//!   `defer_foreign_keys`, ...). Any other pragma, read or write, is
//!   refused. Extension loading is off at the C level too, and the
//!   connection is in SQLite's defensive mode.
//! - `VACUUM` (and so `VACUUM INTO 'file'`) cannot run inside a
//!   transaction, and every app statement runs inside one.
//! - A time limit per statement: a progress handler interrupts a statement
//!   running past its deadline. It runs on the statement's own thread, so
//!   unlike an interrupt sent from a watchdog thread it can never land on
//!   the next statement by mistake.
//! - A result cap: rows are counted in bytes as they are read, and a
//!   statement producing more than the cap fails.
//! - SQLite's limits set to D1's documented ones: 2,000,000 bytes per
//!   string, blob or row; 100,000 bytes of SQL; 100 bound parameters; 100
//!   columns; 32 function arguments; 50-byte LIKE/GLOB patterns.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use rusqlite::config::DbConfig;
use rusqlite::fallible_iterator::FallibleIterator as _;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Batch, Connection, StatementStatus};

use super::error::{sqlite_message, D1Error, NO_STATEMENTS, PARAMS_NOT_LAST, WRONG_BINDING_COUNT};
use super::{D1Meta, D1Options, Value};
use crate::storage_error::{StorageContext as _, StorageError};

/// What `meta.served_by` says.
pub const SERVED_BY: &str = "isopod";

/// VM instructions between two looks at the deadline: often enough to stop
/// within a millisecond or so, rarely enough to cost nothing measurable.
const PROGRESS_OPS: i32 = 1000;
/// No deadline armed.
const NO_DEADLINE: u64 = u64::MAX;

/// D1's documented limits, as SQLite limits.
const LIMITS: &[(Limit, i32)] = &[
    (Limit::SQLITE_LIMIT_LENGTH, 2_000_000),
    (Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000),
    (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 100),
    (Limit::SQLITE_LIMIT_COLUMN, 100),
    (Limit::SQLITE_LIMIT_FUNCTION_ARG, 32),
    (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 50),
    (Limit::SQLITE_LIMIT_ATTACHED, 0),
];

/// Pragmas an app may read; `true` for those it may also set (to a
/// boolean). Pragmas taking an object name (`table_info(t)`) pass that
/// name as their value and are reads.
const ALLOWED_PRAGMAS: &[(&str, PragmaArg)] = &[
    ("table_list", PragmaArg::Any),
    ("table_info", PragmaArg::Any),
    ("table_xinfo", PragmaArg::Any),
    ("data_version", PragmaArg::None),
    ("page_size", PragmaArg::None),
    ("case_sensitive_like", PragmaArg::Boolean),
    ("foreign_keys", PragmaArg::Boolean),
    ("defer_foreign_keys", PragmaArg::Boolean),
    ("ignore_check_constraints", PragmaArg::Boolean),
    ("legacy_alter_table", PragmaArg::Boolean),
    ("recursive_triggers", PragmaArg::Boolean),
    ("reverse_unordered_selects", PragmaArg::Boolean),
    ("foreign_key_check", PragmaArg::Any),
    ("foreign_key_list", PragmaArg::Any),
    ("index_info", PragmaArg::Any),
    ("index_list", PragmaArg::Any),
    ("index_xinfo", PragmaArg::Any),
    ("quick_check", PragmaArg::Any),
    ("optimize", PragmaArg::Number),
];

#[derive(Clone, Copy)]
enum PragmaArg {
    /// No argument: a read.
    None,
    /// Nothing (a read) or a boolean (a switch).
    Boolean,
    /// Nothing or an integer.
    Number,
    /// Nothing, or an object name or number (a read of that object).
    Any,
}

/// One statement's (or query's) rows.
pub(crate) struct Output {
    pub(crate) columns: Arc<[String]>,
    pub(crate) rows: Vec<Vec<Value>>,
    pub(crate) meta: D1Meta,
}

/// A query of a call: SQL (one or more statements) and its parameters.
pub(crate) struct Query {
    pub(crate) sql: Arc<str>,
    pub(crate) params: Vec<Value>,
}

/// A job for the database's thread.
pub(crate) type Job = Box<dyn FnOnce(&mut Engine) + Send>;

/// The connection and its guards. Lives on the database's thread.
pub(crate) struct Engine {
    pub(crate) conn: Connection,
    trusted: Arc<AtomicBool>,
    /// Milliseconds after `epoch` at which the running statement is
    /// interrupted, or [`NO_DEADLINE`].
    deadline: Arc<AtomicU64>,
    epoch: Instant,
    options: D1Options,
}

impl Engine {
    /// Opens the database file at `path` (creating it) with every guard.
    pub(crate) fn open(path: &Path, options: D1Options) -> Result<Engine, StorageError> {
        const CONTEXT: &str = "opening a D1 database";
        crate::sqlite_file::create_private(path)?;
        let conn = crate::sqlite_file::open_durable(path, CONTEXT)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
            .storage_context(CONTEXT)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
            .storage_context(CONTEXT)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, false)
            .storage_context(CONTEXT)?;
        // Extension loading stays off: SQLite starts with it off, and
        // rusqlite can only turn it on behind a feature this crate does
        // not enable. The authorizer refuses the SQL function as well.
        for &(limit, value) in LIMITS {
            conn.set_limit(limit, value).storage_context(CONTEXT)?;
        }

        let trusted = Arc::new(AtomicBool::new(false));
        let is_trusted = trusted.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if is_trusted.load(Ordering::SeqCst) {
                Authorization::Allow
            } else {
                authorize(&ctx)
            }
        }));
        let deadline = Arc::new(AtomicU64::new(NO_DEADLINE));
        let epoch = Instant::now();
        let armed = deadline.clone();
        conn.progress_handler(
            PROGRESS_OPS,
            Some(move || {
                let at = armed.load(Ordering::SeqCst);
                at != NO_DEADLINE && millis_since(epoch) >= at
            }),
        );
        Ok(Engine {
            conn,
            trusted,
            deadline,
            epoch,
            options,
        })
    }

    /// Runs `f` with the authorizer out of the way: for the statements this
    /// crate writes itself, never for an app's.
    pub(crate) fn trusted<T>(&mut self, f: impl FnOnce(&Connection) -> T) -> T {
        self.trusted.store(true, Ordering::SeqCst);
        let result = f(&self.conn);
        self.trusted.store(false, Ordering::SeqCst);
        result
    }

    fn arm(&self) {
        // One more millisecond: `millis_since` rounds down, and a statement
        // must get at least its whole limit.
        let limit = u64::try_from(self.options.time_limit.as_millis()).unwrap_or(u64::MAX);
        let at = millis_since(self.epoch)
            .saturating_add(limit)
            .saturating_add(1);
        self.deadline.store(at, Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.deadline.store(NO_DEADLINE, Ordering::SeqCst);
    }

    fn timed_out(&self) -> bool {
        let at = self.deadline.load(Ordering::SeqCst);
        at != NO_DEADLINE && millis_since(self.epoch) >= at
    }

    /// The database's size in bytes.
    fn size(&mut self) -> Result<u64, String> {
        self.trusted(|conn| {
            conn.query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |row| row.get::<_, i64>(0),
            )
        })
        .map(|size| u64::try_from(size).unwrap_or(0))
        .map_err(|e| sqlite_message(&e))
    }

    fn begin(&mut self) -> Result<(), String> {
        self.trusted(|conn| conn.execute_batch("BEGIN IMMEDIATE"))
            .map_err(|e| sqlite_message(&e))
    }

    fn commit(&mut self) -> Result<(), String> {
        let committed = self.trusted(|conn| conn.execute_batch("COMMIT"));
        committed.map_err(|e| {
            self.rollback();
            sqlite_message(&e)
        })
    }

    /// Rolls back whatever transaction is open (none is fine).
    pub(crate) fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.trusted(|conn| conn.execute_batch("ROLLBACK"));
        }
    }

    /// Runs `queries` in one transaction: every one, or none. `keep_rows`
    /// false runs them for their effect only (`run`), rows discarded.
    pub(crate) fn batch(
        &mut self,
        queries: &[Query],
        keep_rows: bool,
    ) -> Result<Vec<Output>, String> {
        self.begin()?;
        let mut budget = self.options.max_result_bytes;
        let mut outputs = Vec::with_capacity(queries.len());
        for query in queries {
            match self.query(&query.sql, &query.params, keep_rows, &mut budget) {
                Ok(Some(output)) => outputs.push(output),
                Ok(None) => {
                    self.rollback();
                    return Err(NO_STATEMENTS.into());
                }
                Err(e) => {
                    self.rollback();
                    return Err(e);
                }
            }
        }
        self.commit()?;
        Ok(outputs)
    }

    /// `exec`: each line of `sql` (trimmed, split at newlines, as workerd's
    /// binding sends it) runs as its statements, in one transaction.
    /// Answers how many lines ran and their total duration in ms.
    pub(crate) fn exec(&mut self, sql: &str) -> Result<(usize, f64), D1Error> {
        self.begin().map_err(D1Error::Query)?;
        let mut budget = self.options.max_result_bytes;
        let (mut count, mut duration) = (0, 0.0);
        for (index, line) in sql.trim().split('\n').enumerate() {
            match self.query(line, &[], false, &mut budget) {
                Ok(Some(output)) => {
                    count += 1;
                    duration += output.meta.duration;
                }
                // A blank or comment-only line runs nothing and counts
                // for nothing.
                Ok(None) => {}
                Err(error) => {
                    self.rollback();
                    return Err(D1Error::Exec {
                        line: index + 1,
                        text: line.to_owned(),
                        error,
                    });
                }
            }
        }
        // A failed commit is no line's fault.
        self.commit().map_err(D1Error::Query)?;
        Ok((count, duration))
    }

    /// Runs one query: every statement in `sql` in order, the rows of the
    /// last one kept (as workerd's SQL storage does for multi-statement
    /// SQL, only the last statement may have parameters). `None` when
    /// `sql` holds no statement.
    fn query(
        &mut self,
        sql: &str,
        params: &[Value],
        keep_rows: bool,
        budget: &mut usize,
    ) -> Result<Option<Output>, String> {
        let started = Instant::now();
        let changes_before = self.conn.total_changes();
        let last_row_before = self.conn.last_insert_rowid();
        let size_before = self.size()?;
        self.arm();
        let ran = self.statements(sql, params, keep_rows, budget);
        let timed_out = self.timed_out();
        self.disarm();
        let ran = ran.map_err(|e| match e {
            StatementError::Sqlite(e) if timed_out && is_interrupt(&e) => format!(
                "Query exceeded the time limit of {} ms: SQLITE_INTERRUPT",
                self.options.time_limit.as_millis()
            ),
            StatementError::Sqlite(e) => sqlite_message(&e),
            StatementError::Other(message) => message,
        })?;
        let Some((columns, rows, rows_read)) = ran else {
            return Ok(None);
        };
        let changes = self.conn.total_changes() - changes_before;
        let last_row_id = self.conn.last_insert_rowid();
        let size_after = self.size()?;
        Ok(Some(Output {
            columns,
            rows,
            meta: D1Meta {
                served_by: SERVED_BY,
                duration: started.elapsed().as_secs_f64() * 1000.0,
                changes,
                last_row_id,
                changed_db: changes != 0
                    || last_row_id != last_row_before
                    || size_after != size_before,
                size_after,
                rows_read,
                rows_written: changes,
            },
        }))
    }

    /// The statements of one query; (columns, rows, rows read) of the last.
    #[allow(clippy::type_complexity)]
    fn statements(
        &self,
        sql: &str,
        params: &[Value],
        keep_rows: bool,
        budget: &mut usize,
    ) -> Result<Option<(Arc<[String]>, Vec<Vec<Value>>, u64)>, StatementError> {
        let cap = self.options.max_result_bytes;
        let mut batch = Batch::new(&self.conn, sql);
        let mut last = None;
        let mut bound = false;
        let mut rows_read = 0u64;
        while let Some(mut stmt) = batch.next()? {
            if bound {
                return Err(StatementError::Other(PARAMS_NOT_LAST.into()));
            }
            let wanted = stmt.parameter_count();
            if wanted > 0 {
                if wanted != params.len() {
                    return Err(StatementError::Other(WRONG_BINDING_COUNT.into()));
                }
                for (index, value) in params.iter().enumerate() {
                    stmt.raw_bind_parameter(index + 1, value)?;
                }
                bound = true;
            }
            let columns: Arc<[String]> =
                stmt.column_names().into_iter().map(String::from).collect();
            let width = columns.len();
            let mut out = Vec::new();
            let mut returned = 0u64;
            {
                let mut rows = stmt.raw_query();
                while let Some(row) = rows.next()? {
                    returned += 1;
                    if !keep_rows {
                        continue;
                    }
                    let mut values = Vec::with_capacity(width);
                    for index in 0..width {
                        let value = Value::from_ref(row.get_ref(index)?);
                        let weight = value.weight();
                        if weight > *budget {
                            return Err(StatementError::Other(format!(
                                "Query result exceeded the limit of {cap} bytes"
                            )));
                        }
                        *budget -= weight;
                        values.push(value);
                    }
                    out.push(values);
                }
            }
            // Rows read, as close as stock SQLite tells: the rows a full
            // scan visited, or the rows returned if more (an index lookup
            // steps no scan). SQLite counts the steps from one row to the
            // next, so a scan of n rows counts n - 1: one is added back.
            let steps = u64::try_from(stmt.get_status(StatementStatus::FullscanStep)).unwrap_or(0);
            let scanned = if steps > 0 { steps + 1 } else { 0 };
            rows_read += scanned.max(returned);
            last = Some((columns, out));
        }
        if !bound && !params.is_empty() && last.is_some() {
            return Err(StatementError::Other(WRONG_BINDING_COUNT.into()));
        }
        Ok(last.map(|(columns, rows)| (columns, rows, rows_read)))
    }
}

enum StatementError {
    Sqlite(rusqlite::Error),
    Other(String),
}

impl From<rusqlite::Error> for StatementError {
    fn from(e: rusqlite::Error) -> Self {
        StatementError::Sqlite(e)
    }
}

fn is_interrupt(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The authorizer's verdict on an app's statement.
fn authorize(ctx: &AuthContext<'_>) -> Authorization {
    let allow = match &ctx.action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => false,
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => false,
        AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempView { .. } => false,
        AuthAction::Function { function_name } => {
            !function_name.eq_ignore_ascii_case("load_extension")
        }
        AuthAction::CreateVtable { module_name, .. }
        | AuthAction::DropVtable { module_name, .. } => ["fts5", "fts5vocab", "rtree", "rtree_i32"]
            .iter()
            .any(|m| module_name.eq_ignore_ascii_case(m)),
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => pragma_allowed(pragma_name, *pragma_value),
        AuthAction::Unknown { .. } => false,
        // Reading, writing and defining ordinary tables, views, indexes
        // and triggers of the main database: what D1 is for.
        _ => ctx.database_name.is_none_or(|db| db == "main"),
    };
    if allow {
        Authorization::Allow
    } else {
        Authorization::Deny
    }
}

fn pragma_allowed(name: &str, value: Option<&str>) -> bool {
    let Some(&(_, arg)) = ALLOWED_PRAGMAS
        .iter()
        .find(|(allowed, _)| name.eq_ignore_ascii_case(allowed))
    else {
        return false;
    };
    let Some(value) = value else {
        return true;
    };
    match arg {
        PragmaArg::None => false,
        PragmaArg::Any => true,
        PragmaArg::Number => value.trim().parse::<i64>().is_ok(),
        PragmaArg::Boolean => {
            let value = value.trim().trim_matches(|c| c == '\'' || c == '"');
            ["true", "false", "yes", "no", "on", "off", "1", "0"]
                .iter()
                .any(|b| value.eq_ignore_ascii_case(b))
        }
    }
}

/// The database thread's loop: run jobs until every handle is gone.
pub(crate) fn run(mut engine: Engine, jobs: mpsc::Receiver<Job>) {
    for job in jobs {
        // A panic in a job must not take the database down for every
        // later call: roll back whatever it left open and go on.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut engine)));
        if outcome.is_err() {
            engine.disarm();
            engine.rollback();
        }
    }
}
