//! The one digest the store uses: SHA-256, as lowercase hex.

use sha2::{Digest, Sha256};

/// The SHA-256 of `bytes` as 64 lowercase hex digits.
///
/// It is the content address of a bundle, and what callers use to digest a
/// config declaration for [`Store::apply_declared`](crate::Store::apply_declared),
/// so both sides agree on one spelling.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}
