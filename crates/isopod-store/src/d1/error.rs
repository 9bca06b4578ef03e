//! The errors D1 calls fail with. `Display` is the message the JS side
//! throws, in the shapes workerd's D1 binding gives them
//! (`src/cloudflare/internal/d1-api.ts`): `D1_ERROR: <error>` for a failed
//! query or batch, `D1_EXEC_ERROR: Error in line <n>: <line>: <error>` for
//! `exec`, `D1_COLUMN_NOTFOUND: Column not found (<column>)` for
//! `first(column)`. `<error>` for SQLite's own failures is formatted as
//! workerd's SQLite layer does (`dbErrorMessage` in
//! `src/workerd/util/sqlite.c++`), which is what miniflare's D1 returns:
//! `<sqlite message>[ at offset <n>]: <CODE>[ (extended: <EXTENDED CODE>)]`,
//! e.g. `near "SELEC": syntax error at offset 0: SQLITE_ERROR`.

use rusqlite::ffi;

/// workerd's SQLite layer, when the number of values bound differs from the
/// statement's parameters (`checkRequirements` in `sqlite.c++`).
pub const WRONG_BINDING_COUNT: &str = "Wrong number of parameter bindings for SQL query.";
/// workerd's SQLite layer, when a statement other than the last of a
/// multi-statement query has parameters.
pub const PARAMS_NOT_LAST: &str =
    "When executing multiple SQL statements in a single call, only the last statement can have parameters.";
/// miniflare's D1, for a query that is empty or only comments.
pub const NO_STATEMENTS: &str = "No SQL statements detected.";

/// Why a D1 call failed. `Display` is the message to throw (as an
/// `Error`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum D1Error {
    /// A query or batch failed; nothing it wrote was kept.
    #[error("D1_ERROR: {0}")]
    Query(String),
    /// A line of `exec` failed; nothing `exec` wrote was kept.
    #[error("D1_EXEC_ERROR: Error in line {line}: {text}: {error}")]
    Exec {
        /// The failing line, from 1.
        line: usize,
        /// Its text.
        text: String,
        /// What failed, as in [`D1Error::Query`].
        error: String,
    },
    /// `first(column)` named a column the row does not have.
    #[error("D1_COLUMN_NOTFOUND: Column not found ({0})")]
    ColumnNotFound(String),
    /// The database could not be used at all (its thread is gone, its
    /// file failed). The app sees only that; `detail` is for the log.
    #[error("D1_ERROR: Internal error")]
    Internal {
        /// What went wrong.
        detail: String,
    },
}

/// The text after `D1_ERROR: ` for a SQLite failure.
pub(crate) fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqlInputError {
            error, msg, offset, ..
        } => {
            let offset = (*offset >= 0).then_some(*offset);
            format_sqlite(msg, offset, error)
        }
        rusqlite::Error::SqliteFailure(error, msg) => {
            let msg = msg.clone().unwrap_or_else(|| error.to_string());
            format_sqlite(&msg, None, error)
        }
        other => other.to_string(),
    }
}

fn format_sqlite(msg: &str, offset: Option<i32>, error: &ffi::Error) -> String {
    let primary = error.extended_code & 0xff;
    let mut out = msg.to_owned();
    if let Some(offset) = offset {
        out.push_str(&format!(" at offset {offset}"));
    }
    out.push_str(": ");
    out.push_str(primary_name(primary));
    if error.extended_code != primary {
        if let Some(extended) = extended_name(error.extended_code) {
            out.push_str(&format!(" (extended: {extended})"));
        }
    }
    out
}

/// SQLite's name of a primary result code.
fn primary_name(code: i32) -> &'static str {
    match code {
        ffi::SQLITE_ERROR => "SQLITE_ERROR",
        ffi::SQLITE_INTERNAL => "SQLITE_INTERNAL",
        ffi::SQLITE_PERM => "SQLITE_PERM",
        ffi::SQLITE_ABORT => "SQLITE_ABORT",
        ffi::SQLITE_BUSY => "SQLITE_BUSY",
        ffi::SQLITE_LOCKED => "SQLITE_LOCKED",
        ffi::SQLITE_NOMEM => "SQLITE_NOMEM",
        ffi::SQLITE_READONLY => "SQLITE_READONLY",
        ffi::SQLITE_INTERRUPT => "SQLITE_INTERRUPT",
        ffi::SQLITE_IOERR => "SQLITE_IOERR",
        ffi::SQLITE_CORRUPT => "SQLITE_CORRUPT",
        ffi::SQLITE_NOTFOUND => "SQLITE_NOTFOUND",
        ffi::SQLITE_FULL => "SQLITE_FULL",
        ffi::SQLITE_CANTOPEN => "SQLITE_CANTOPEN",
        ffi::SQLITE_PROTOCOL => "SQLITE_PROTOCOL",
        ffi::SQLITE_EMPTY => "SQLITE_EMPTY",
        ffi::SQLITE_SCHEMA => "SQLITE_SCHEMA",
        ffi::SQLITE_TOOBIG => "SQLITE_TOOBIG",
        ffi::SQLITE_CONSTRAINT => "SQLITE_CONSTRAINT",
        ffi::SQLITE_MISMATCH => "SQLITE_MISMATCH",
        ffi::SQLITE_MISUSE => "SQLITE_MISUSE",
        ffi::SQLITE_NOLFS => "SQLITE_NOLFS",
        ffi::SQLITE_AUTH => "SQLITE_AUTH",
        ffi::SQLITE_FORMAT => "SQLITE_FORMAT",
        ffi::SQLITE_RANGE => "SQLITE_RANGE",
        ffi::SQLITE_NOTADB => "SQLITE_NOTADB",
        ffi::SQLITE_NOTICE => "SQLITE_NOTICE",
        ffi::SQLITE_WARNING => "SQLITE_WARNING",
        _ => "SQLITE_UNKNOWN",
    }
}

/// SQLite's name of the extended result codes apps meet (workerd names
/// more; an unnamed one is left out of the message, as workerd does).
fn extended_name(code: i32) -> Option<&'static str> {
    Some(match code {
        ffi::SQLITE_CONSTRAINT_CHECK => "SQLITE_CONSTRAINT_CHECK",
        ffi::SQLITE_CONSTRAINT_COMMITHOOK => "SQLITE_CONSTRAINT_COMMITHOOK",
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => "SQLITE_CONSTRAINT_FOREIGNKEY",
        ffi::SQLITE_CONSTRAINT_FUNCTION => "SQLITE_CONSTRAINT_FUNCTION",
        ffi::SQLITE_CONSTRAINT_NOTNULL => "SQLITE_CONSTRAINT_NOTNULL",
        ffi::SQLITE_CONSTRAINT_PRIMARYKEY => "SQLITE_CONSTRAINT_PRIMARYKEY",
        ffi::SQLITE_CONSTRAINT_TRIGGER => "SQLITE_CONSTRAINT_TRIGGER",
        ffi::SQLITE_CONSTRAINT_UNIQUE => "SQLITE_CONSTRAINT_UNIQUE",
        ffi::SQLITE_CONSTRAINT_VTAB => "SQLITE_CONSTRAINT_VTAB",
        ffi::SQLITE_CONSTRAINT_ROWID => "SQLITE_CONSTRAINT_ROWID",
        ffi::SQLITE_CONSTRAINT_DATATYPE => "SQLITE_CONSTRAINT_DATATYPE",
        ffi::SQLITE_ERROR_MISSING_COLLSEQ => "SQLITE_ERROR_MISSING_COLLSEQ",
        ffi::SQLITE_ERROR_RETRY => "SQLITE_ERROR_RETRY",
        ffi::SQLITE_ABORT_ROLLBACK => "SQLITE_ABORT_ROLLBACK",
        ffi::SQLITE_BUSY_RECOVERY => "SQLITE_BUSY_RECOVERY",
        ffi::SQLITE_BUSY_SNAPSHOT => "SQLITE_BUSY_SNAPSHOT",
        ffi::SQLITE_BUSY_TIMEOUT => "SQLITE_BUSY_TIMEOUT",
        ffi::SQLITE_READONLY_RECOVERY => "SQLITE_READONLY_RECOVERY",
        ffi::SQLITE_READONLY_CANTLOCK => "SQLITE_READONLY_CANTLOCK",
        ffi::SQLITE_READONLY_ROLLBACK => "SQLITE_READONLY_ROLLBACK",
        ffi::SQLITE_READONLY_DBMOVED => "SQLITE_READONLY_DBMOVED",
        ffi::SQLITE_CORRUPT_VTAB => "SQLITE_CORRUPT_VTAB",
        _ => return None,
    })
}
