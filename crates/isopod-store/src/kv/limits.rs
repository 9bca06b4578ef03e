//! Workers KV's limits and the checks that enforce them, with the messages
//! Workers gives.
//!
//! Sources: the limits are miniflare's `KVLimits`
//! (`packages/miniflare/src/workers/kv/constants.ts` in
//! cloudflare/workers-sdk), which are Cloudflare's documented ones; the
//! messages are miniflare's `validator.worker.ts` and `namespace.worker.ts`,
//! except the three `TypeError`s workerd throws itself
//! (`validateKeyName` in workerd's `src/workerd/api/kv.c++`).

use super::error::{KvError, KvOp};

/// The longest key, in UTF-8 bytes.
pub const MAX_KEY_SIZE: usize = 512;
/// The largest value, in bytes (25 MiB).
pub const MAX_VALUE_SIZE: usize = 25 * 1024 * 1024;
/// The largest metadata, in bytes of its JSON serialization.
pub const MAX_METADATA_SIZE: usize = 1024;
/// The most keys one `list` returns, and its default.
pub const MAX_LIST_KEYS: usize = 1000;
/// The most keys one bulk `get` may ask for.
pub const MAX_BULK_GET_KEYS: usize = 100;
/// The most value bytes one bulk `get` may return (25 MiB).
pub const MAX_BULK_SIZE: usize = 25 * 1024 * 1024;
/// How far ahead, in seconds, an expiration must be.
pub const MIN_EXPIRATION_TTL: i64 = 60;

/// workerd: `JSG_REQUIRE(name != "", TypeError, ...)`.
pub const EMPTY_KEY: &str = "Key name cannot be empty.";
/// workerd: `JSG_REQUIRE(name != ".", TypeError, ...)`.
pub const DOT_KEY: &str = "\".\" is not allowed as a key name.";
/// workerd: `JSG_REQUIRE(name != "..", TypeError, ...)`.
pub const DOT_DOT_KEY: &str = "\"..\" is not allowed as a key name.";
/// miniflare's `validateKey`, for keys of a bulk get (which workerd sends
/// unchecked).
pub const BULK_EMPTY_KEY: &str = "Key names must not be empty";

/// Checks a key as workerd does before `get`, `put` and `delete`.
pub(crate) fn check_key(op: KvOp, key: &str) -> Result<(), KvError> {
    match key {
        "" => return Err(KvError::InvalidKeyName(EMPTY_KEY)),
        "." => return Err(KvError::InvalidKeyName(DOT_KEY)),
        ".." => return Err(KvError::InvalidKeyName(DOT_DOT_KEY)),
        _ => {}
    }
    check_key_length(op, key)
}

/// Checks a key of a bulk get as miniflare's service does.
pub(crate) fn check_bulk_key(key: &str) -> Result<(), KvError> {
    let op = KvOp::GetBulk;
    match key {
        "" => Err(KvError::rejected(op, 400, BULK_EMPTY_KEY)),
        "." | ".." => Err(KvError::rejected(
            op,
            400,
            format!("Illegal key name \"{key}\". Please use a different name."),
        )),
        _ => check_key_length(op, key),
    }
}

/// Checks a key's (or a list prefix's) length.
pub(crate) fn check_key_length(op: KvOp, key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_SIZE {
        return Err(KvError::rejected(
            op,
            414,
            format!(
                "UTF-8 encoded length of {} exceeds key length limit of {MAX_KEY_SIZE}.",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// Checks a value's size.
pub(crate) fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_SIZE {
        return Err(KvError::rejected(
            KvOp::Put,
            413,
            format!(
                "Value length of {} exceeds limit of {MAX_VALUE_SIZE}.",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Checks metadata: its size, then that it is JSON at all (the JS side
/// serializes it, so a failure here is a bug there, reported as a 400).
pub(crate) fn check_metadata(json: &str) -> Result<(), KvError> {
    if json.len() > MAX_METADATA_SIZE {
        return Err(KvError::rejected(
            KvOp::Put,
            413,
            format!(
                "Metadata length of {} exceeds limit of {MAX_METADATA_SIZE}.",
                json.len()
            ),
        ));
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(json).is_err() {
        return Err(KvError::rejected(
            KvOp::Put,
            400,
            "Metadata is not valid JSON.",
        ));
    }
    Ok(())
}

/// The absolute expiration (seconds since the epoch) a put asks for, if
/// any, checked against `now` (seconds). `expiration_ttl` wins over
/// `expiration`, as in miniflare.
pub(crate) fn expiration(
    now: u64,
    expiration: Option<i64>,
    expiration_ttl: Option<i64>,
) -> Result<Option<u64>, KvError> {
    let op = KvOp::Put;
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    if let Some(ttl) = expiration_ttl {
        if ttl <= 0 {
            return Err(KvError::rejected(
                op,
                400,
                format!("Invalid expiration_ttl of {ttl}. Please specify integer greater than 0."),
            ));
        }
        if ttl < MIN_EXPIRATION_TTL {
            return Err(KvError::rejected(
                op,
                400,
                format!(
                    "Invalid expiration_ttl of {ttl}. Expiration TTL must be at least {MIN_EXPIRATION_TTL}."
                ),
            ));
        }
        let at = now.saturating_add(ttl);
        return Ok(Some(u64::try_from(at).unwrap_or(u64::MAX)));
    }
    let Some(at) = expiration else {
        return Ok(None);
    };
    if at <= now {
        return Err(KvError::rejected(
            op,
            400,
            format!(
                "Invalid expiration of {at}. Please specify integer greater than the current number of seconds since the UNIX epoch."
            ),
        ));
    }
    if at < now.saturating_add(MIN_EXPIRATION_TTL) {
        return Err(KvError::rejected(
            op,
            400,
            format!(
                "Invalid expiration of {at}. Expiration times must be at least {MIN_EXPIRATION_TTL} seconds in the future."
            ),
        ));
    }
    Ok(Some(u64::try_from(at).unwrap_or(u64::MAX)))
}

/// The page size a list asks for. `None` is the default (1000); the JS
/// side passes `None` for a limit of 0 or less, as workerd does (it only
/// sends `key_count_limit` when it is positive).
pub(crate) fn list_limit(limit: Option<i64>) -> Result<usize, KvError> {
    let Some(limit) = limit else {
        return Ok(MAX_LIST_KEYS);
    };
    if limit < 1 {
        return Err(KvError::rejected(
            KvOp::List,
            400,
            format!(
                "Invalid key_count_limit of {limit}. Please specify an integer greater than 0."
            ),
        ));
    }
    // The message says "less than 1000" while 1000 itself is accepted:
    // miniflare's text, kept as apps see it.
    match usize::try_from(limit) {
        Ok(n) if n <= MAX_LIST_KEYS => Ok(n),
        _ => Err(KvError::rejected(
            KvOp::List,
            400,
            format!(
                "Invalid key_count_limit of {limit}. Please specify an integer less than {MAX_LIST_KEYS}."
            ),
        )),
    }
}

/// Checks the number of keys of a bulk get.
pub(crate) fn check_bulk_count(count: usize) -> Result<(), KvError> {
    if count > MAX_BULK_GET_KEYS {
        return Err(KvError::rejected(
            KvOp::GetBulk,
            400,
            format!("You can request a maximum of {MAX_BULK_GET_KEYS} keys"),
        ));
    }
    if count < 1 {
        return Err(KvError::rejected(
            KvOp::GetBulk,
            400,
            "You must request a minimum of 1 key",
        ));
    }
    Ok(())
}

/// Checks the total value size a bulk get returns.
pub(crate) fn check_bulk_size(total: usize) -> Result<(), KvError> {
    if total > MAX_BULK_SIZE {
        return Err(KvError::rejected(
            KvOp::GetBulk,
            413,
            format!(
                "Total size of request exceeds the limit of {}MB",
                MAX_BULK_SIZE / 1024 / 1024
            ),
        ));
    }
    Ok(())
}
