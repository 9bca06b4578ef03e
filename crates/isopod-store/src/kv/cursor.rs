//! List cursors: opaque to apps, bound to the namespace that issued them.
//!
//! A cursor carries the last key of the page it ends (the next page starts
//! after it) and a MAC over that key and the namespace's scope (backend and
//! name), keyed with the store's secret. A cursor from another namespace,
//! edited, or made up fails the MAC and is refused, so a cursor can never
//! point a list into another namespace, nor anywhere its namespace did not
//! itself reach. (Even unsigned it could not: the key is only ever bound
//! as data within the namespace's own rows or Redis prefix. The MAC makes
//! the refusal explicit rather than relying on that.)
//!
//! Format: base64url (no padding) of `1 || last_key || tag`, where `tag`
//! is the first 16 bytes of HMAC-SHA256(secret, "isopod-kv-cursor" ||
//! len(scope) as u32 BE || scope || last_key).

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::storage_error::StorageError;

/// The format version, first byte of every cursor.
const VERSION: u8 = 1;
/// Bytes of the MAC kept in a cursor: 128 bits, plenty against forgery.
const TAG_LEN: usize = 16;
/// Bytes of the secret.
const SECRET_LEN: usize = 32;
/// Domain separation: this secret signs nothing else, but if it ever does,
/// a cursor's MAC cannot be replayed as something else's.
const DOMAIN: &[u8] = b"isopod-kv-cursor";

/// The secret cursors are signed with.
#[derive(Clone)]
pub struct CursorKey([u8; SECRET_LEN]);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

impl CursorKey {
    /// A fresh random key: cursors signed with it die with it (a process
    /// restart invalidates them).
    pub fn random() -> Result<CursorKey, StorageError> {
        let mut secret = [0u8; SECRET_LEN];
        getrandom::fill(&mut secret).map_err(|e| StorageError::NoRandomness {
            what: "the KV cursor key",
            detail: e.to_string(),
        })?;
        Ok(CursorKey(secret))
    }

    /// The key kept in `path` (created owner-only with a random key if
    /// missing), so cursors outlive a restart and are shared by every
    /// process on the data directory.
    pub fn load_or_create(path: &Path) -> Result<CursorKey, StorageError> {
        let io = |context: &'static str| {
            move |source| StorageError::Io {
                context,
                path: path.to_path_buf(),
                source,
            }
        };
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut file) => {
                let key = CursorKey::random()?;
                file.write_all(&key.0)
                    .and_then(|()| file.sync_all())
                    .map_err(io("writing the cursor key"))?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mut secret = [0u8; SECRET_LEN];
                fs::File::open(path)
                    .and_then(|mut file| file.read_exact(&mut secret))
                    .map_err(io("reading the cursor key"))?;
                Ok(CursorKey(secret))
            }
            Err(e) => Err(io("creating the cursor key")(e)),
        }
    }

    fn mac(&self, scope: &str, last_key: &[u8]) -> Hmac<Sha256> {
        // Any key length is valid for HMAC, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(DOMAIN);
        let scope_len = u32::try_from(scope.len()).unwrap_or(u32::MAX);
        mac.update(&scope_len.to_be_bytes());
        mac.update(scope.as_bytes());
        mac.update(last_key);
        mac
    }

    /// The cursor that resumes a list of `scope` after `last_key`.
    pub(crate) fn seal(&self, scope: &str, last_key: &[u8]) -> String {
        let tag = self.mac(scope, last_key).finalize().into_bytes();
        let mut raw = Vec::with_capacity(1 + last_key.len() + TAG_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(last_key);
        raw.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The key a cursor resumes after, if `scope` issued it.
    pub(crate) fn open(&self, scope: &str, cursor: &str) -> Option<Vec<u8>> {
        let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        let (&version, rest) = raw.split_first()?;
        if version != VERSION || rest.len() < TAG_LEN {
            return None;
        }
        let (last_key, tag) = rest.split_at(rest.len() - TAG_LEN);
        // Constant time: a forger learns nothing from how fast it fails.
        self.mac(scope, last_key)
            .verify_truncated_left(tag)
            .ok()
            .map(|()| last_key.to_vec())
    }
}
