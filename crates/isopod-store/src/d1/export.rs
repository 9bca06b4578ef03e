//! `d1 export`: a database as SQL text that rebuilds it.
//!
//! The format is D1's (miniflare's `dumpSql`, itself SQLite shell's
//! `.dump`): `PRAGMA defer_foreign_keys=TRUE;`, then each table's `CREATE`
//! followed by its rows as `INSERT INTO "t" ("a","b") VALUES(...);`, then
//! indexes, triggers and views. One statement per line, and no line break
//! inside one: text holding line breaks is written with `replace(...,
//! char(10))`, so the dump runs through `exec`, which splits at newlines
//! (schema SQL is written as the app created it, though, and may span
//! lines). Internal tables (`sqlite_*`, `_cf_*`) are left out, except
//! `sqlite_sequence`, whose rows keep AUTOINCREMENT counters. A database
//! with virtual tables is refused, as D1 does.

use std::io::Write;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

/// D1's message for a database it cannot export (miniflare's `dumpSql`).
pub const VIRTUAL_TABLES: &str =
    "D1 Export error: cannot export databases with Virtual Tables (fts5)";

/// Why an export failed.
#[derive(Debug)]
pub(crate) enum ExportError {
    Sqlite(rusqlite::Error),
    Io(std::io::Error),
    VirtualTables,
}

impl From<rusqlite::Error> for ExportError {
    fn from(e: rusqlite::Error) -> Self {
        ExportError::Sqlite(e)
    }
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        ExportError::Io(e)
    }
}

/// Writes the database open as `conn` to `out`, from one read transaction
/// (a consistent snapshot while others write).
pub(crate) fn dump(conn: &mut Connection, out: &mut dyn Write) -> Result<(), ExportError> {
    let tx = conn.transaction()?;
    writeln!(out, "PRAGMA defer_foreign_keys=TRUE;")?;
    let tables: Vec<(String, String)> = {
        let mut stmt = tx.prepare(
            "SELECT name, sql FROM sqlite_schema
             WHERE type = 'table' AND sql NOT NULL
             ORDER BY tbl_name = 'sqlite_sequence', rowid",
        )?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    if tables
        .iter()
        .any(|(_, sql)| sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL TABLE"))
    {
        return Err(ExportError::VirtualTables);
    }
    for (table, sql) in &tables {
        if table == "sqlite_sequence" {
            writeln!(out, "DELETE FROM sqlite_sequence;")?;
        } else if table.starts_with("sqlite_") || table.starts_with("_cf_") {
            continue;
        } else {
            writeln!(out, "{sql};")?;
        }
        dump_rows(&tx, table, out)?;
    }
    let mut stmt = tx.prepare(
        "SELECT sql FROM sqlite_schema
         WHERE sql NOT NULL AND type IN ('index', 'trigger', 'view')
         ORDER BY type COLLATE NOCASE, rowid",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let sql: String = row.get(0)?;
        writeln!(out, "{sql};")?;
    }
    Ok(())
}

fn dump_rows(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    out: &mut dyn Write,
) -> Result<(), ExportError> {
    let columns: Vec<String> = {
        let mut stmt = tx.prepare(&format!("PRAGMA table_info({})", quote_id(table)))?;
        let names = stmt.query_map([], |row| row.get::<_, String>(1))?;
        names.collect::<Result<_, _>>()?
    };
    let list = columns.iter().map(|c| quote_id(c)).collect::<Vec<_>>();
    let mut stmt = tx.prepare(&format!(
        "SELECT {} FROM {}",
        list.join(","),
        quote_id(table)
    ))?;
    let head = format!(
        "INSERT INTO {} ({}) VALUES(",
        quote_id(table),
        list.join(",")
    );
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let mut line = head.clone();
        for index in 0..columns.len() {
            if index > 0 {
                line.push(',');
            }
            push_literal(&mut line, row.get_ref(index)?);
        }
        line.push_str(");\n");
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// `"name"`, with inner quotes doubled.
fn quote_id(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL literal that reads back as `value`, exactly and on one line.
fn push_literal(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.push_str("NULL"),
        ValueRef::Integer(i) => out.push_str(&i.to_string()),
        ValueRef::Real(r) if r.is_infinite() => {
            out.push_str(if r > 0.0 { "1e999" } else { "-1e999" })
        }
        // `{:?}` is the shortest text that parses back to the same double,
        // and keeps a fraction or exponent so it reads back as REAL.
        ValueRef::Real(r) => out.push_str(&format!("{r:?}")),
        ValueRef::Text(bytes) => push_text(out, &String::from_utf8_lossy(bytes)),
        ValueRef::Blob(bytes) => {
            out.push_str("X'");
            for b in bytes {
                out.push_str(&format!("{b:02x}"));
            }
            out.push('\'');
        }
    }
}

/// A text literal; line breaks become placeholders put back by
/// `replace(..., char(10))`, as SQLite's shell writes them.
fn push_text(out: &mut String, text: &str) {
    let quoted = text.replace('\'', "''");
    let (lf, cr) = (text.contains('\n'), text.contains('\r'));
    if !lf && !cr {
        out.push('\'');
        out.push_str(&quoted);
        out.push('\'');
        return;
    }
    let lf_mark = unused_mark(text, "\\n", "\\012");
    let cr_mark = unused_mark(text, "\\r", "\\015");
    let body = quoted.replace('\n', &lf_mark).replace('\r', &cr_mark);
    let mut literal = format!("'{body}'");
    if cr {
        literal = format!("replace({literal},'{cr_mark}',char(13))");
    }
    if lf {
        literal = format!("replace({literal},'{lf_mark}',char(10))");
    }
    out.push_str(&literal);
}

/// A marker that does not occur in `text`.
fn unused_mark(text: &str, first: &str, second: &str) -> String {
    if !text.contains(first) {
        return first.to_owned();
    }
    if !text.contains(second) {
        return second.to_owned();
    }
    (0u64..)
        .map(|n| format!("({first}{n})"))
        .find(|mark| !text.contains(mark.as_str()))
        .unwrap_or_default()
}
