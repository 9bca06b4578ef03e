//! D1's values: what a statement binds and what a row holds.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::ToSql;

/// A value bound to a statement or read from a row, as D1 maps them.
///
/// Into SQLite, from JS: `null` is [`Value::Null`], a number is
/// [`Value::Integer`] when it is a safe integer and [`Value::Real`]
/// otherwise (the JS side decides), a string is [`Value::Text`], an
/// `ArrayBuffer`/view or array of bytes is [`Value::Blob`], a boolean binds
/// as the integer 1 or 0 ([`From<bool>`]). Anything else is the JS side's
/// `D1_TYPE_ERROR`.
///
/// Out of SQLite, to JS: integers become numbers (D1 turns every integer
/// into a JS number, so beyond 2^53 it loses precision as D1 does; the
/// exact `i64` is here if the JS side ever offers BigInt), reals numbers,
/// text strings, blobs arrays of bytes, NULL `null`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer.
    Integer(i64),
    /// A double.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// Bytes this value counts for against the result cap: its payload,
    /// plus a word for its slot.
    pub(crate) fn weight(&self) -> usize {
        8 + match self {
            Value::Text(s) => s.len(),
            Value::Blob(b) => b.len(),
            _ => 0,
        }
    }

    pub(crate) fn from_ref(value: ValueRef<'_>) -> Value {
        match value {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            // SQLite text is UTF-8 unless something wrote invalid bytes
            // through a cast; those are replaced rather than fail the row.
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl From<bool> for Value {
    /// D1 binds booleans as integers.
    fn from(b: bool) -> Value {
        Value::Integer(i64::from(b))
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Integer(i)
    }
}

impl From<f64> for Value {
    fn from(r: f64) -> Value {
        Value::Real(r)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Blob(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}
