//! Names of KV namespaces and D1 databases: what an app's config may call
//! them.
//!
//! A name becomes part of a file name (`d1/<name>.sqlite3`) and of Redis
//! keys, so it is held to a small alphabet: ASCII letters, digits, `_`, `-`
//! and `.`, 1 to [`MAX_NAME_LEN`] bytes, starting with a letter, digit or
//! `_`. That rules out `.`, `..`, anything with a `/` and hidden files, so a
//! name can never leave its directory.

use crate::storage_error::StorageError;

/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Checks that `name` is fit to name a `kind` ("KV namespace" or "D1
/// database").
pub(crate) fn validate(kind: &'static str, name: &str) -> Result<(), StorageError> {
    let invalid = |reason: &'static str| StorageError::InvalidName {
        kind,
        name: name.to_owned(),
        reason,
    };
    let first = name.bytes().next().ok_or_else(|| invalid("it is empty"))?;
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("it is longer than 64 bytes"));
    }
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err(invalid("it must start with a letter, a digit or '_'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(invalid(
            "it may hold only ASCII letters, digits, '_', '-' and '.'",
        ));
    }
    Ok(())
}
