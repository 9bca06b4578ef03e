//! The errors a KV call fails with. `Display` is the message the JS side
//! throws, word for word what workerd and miniflare (the simulator behind
//! `wrangler dev`) make apps see, so code written against Workers KV
//! matches the same texts here.
//!
//! workerd shapes every failed KV request as
//! `KV <METHOD> failed: <status> <statusText>` (`checkForErrorStatus` in
//! workerd's `src/workerd/api/kv.c++`), and miniflare's KV service puts its
//! message in the status text. A few key checks happen in workerd itself,
//! before any request; those are `TypeError`s with texts of their own.

use std::fmt;

/// The KV operation that failed, as workerd names it in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOp {
    /// `get(key)` and `getWithMetadata(key)`.
    Get,
    /// `get([keys])` and `getWithMetadata([keys])`.
    GetBulk,
    /// `put`.
    Put,
    /// `delete`.
    Delete,
    /// `list`.
    List,
}

impl KvOp {
    /// The method name in messages: `GET`, `GET_BULK`, `PUT`, `DELETE`,
    /// and `GET` for `list` (workerd lists with an HTTP GET and names it
    /// so).
    pub fn as_str(self) -> &'static str {
        match self {
            KvOp::Get | KvOp::List => "GET",
            KvOp::GetBulk => "GET_BULK",
            KvOp::Put => "PUT",
            KvOp::Delete => "DELETE",
        }
    }
}

impl fmt::Display for KvOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which JS error class the binding throws for a [`KvError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsErrorClass {
    /// `TypeError`: the call's arguments are wrong on their face.
    TypeError,
    /// `Error`: everything else.
    Error,
}

/// Why a KV call failed. `Display` is the message to throw.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// A key workerd refuses before sending anything: empty, `.` or `..`.
    /// Thrown as a `TypeError`.
    #[error("{0}")]
    InvalidKeyName(&'static str),
    /// The call's arguments break a KV limit; `message` is miniflare's (or
    /// workerd's) text after the status.
    #[error("KV {op} failed: {status} {message}")]
    Rejected {
        /// The operation.
        op: KvOp,
        /// The HTTP status Workers KV answers with (400, 413, 414).
        status: u16,
        /// What is wrong.
        message: String,
    },
    /// The backend could not be reached in time (Redis down, or slower than
    /// the call's timeout). Nothing is known to have been written.
    #[error("KV {op} failed: 503 KV storage unavailable: {detail}")]
    Unavailable {
        /// The operation.
        op: KvOp,
        /// What happened, e.g. "no answer from Redis within 2000 ms".
        detail: String,
    },
    /// The backend failed in a way the app can do nothing about (a disk
    /// error, a corrupt entry). The app sees only the status; `detail` is
    /// for the operator's log, since it can name files.
    #[error("KV {op} failed: 500 Internal Server Error")]
    Internal {
        /// The operation.
        op: KvOp,
        /// What went wrong.
        detail: String,
    },
}

impl KvError {
    /// The JS class to throw this as.
    pub fn js_class(&self) -> JsErrorClass {
        match self {
            KvError::InvalidKeyName(_) => JsErrorClass::TypeError,
            _ => JsErrorClass::Error,
        }
    }

    pub(crate) fn rejected(op: KvOp, status: u16, message: impl Into<String>) -> KvError {
        KvError::Rejected {
            op,
            status,
            message: message.into(),
        }
    }
}

/// A backend's failure, before it is tied to the operation that met it.
#[derive(Debug)]
pub(crate) enum BackendError {
    /// See [`KvError::Unavailable`].
    Unavailable(String),
    /// See [`KvError::Internal`].
    Internal(String),
}

impl BackendError {
    pub(crate) fn detail(self) -> String {
        match self {
            BackendError::Unavailable(detail) | BackendError::Internal(detail) => detail,
        }
    }

    pub(crate) fn during(self, op: KvOp) -> KvError {
        match self {
            BackendError::Unavailable(detail) => KvError::Unavailable { op, detail },
            BackendError::Internal(detail) => KvError::Internal { op, detail },
        }
    }
}

impl From<rusqlite::Error> for BackendError {
    fn from(e: rusqlite::Error) -> Self {
        BackendError::Internal(format!("SQLite: {e}"))
    }
}
