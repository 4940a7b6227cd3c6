//! Tokens whose signature this node already verified, so that a token presented on every call
//! (a caller's JWT, a citizen's consent) costs one signature check, not one per call: an
//! Ed25519 verification is tens of microseconds, more than the rest of a call's checks.
//!
//! Entries are keyed by a SHA-256 of the whole token (the token itself is never stored) and
//! live until the token's `exp`. The map is bounded: when full, expired entries go, and if
//! it is still full, all of them (the next calls verify again). What a cached entry spares
//! is only the signature and decoding: every check of the call's scope, expiry and
//! revocation still runs on every call.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// A token's cache key.
pub type TokenDigest = [u8; 32];

/// The SHA-256 of a token, its key in a [`VerifiedCache`].
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Verified tokens' decoded contents, until their expiry (seconds since the epoch).
pub struct VerifiedCache<T> {
    capacity: usize,
    entries: Mutex<HashMap<TokenDigest, (T, u64)>>,
}

impl<T: Clone> VerifiedCache<T> {
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The entry of `digest` if it has not expired at `now_s`.
    pub fn get(&self, digest: &TokenDigest, now_s: u64) -> Option<T> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(digest)
            .filter(|(_, exp)| *exp > now_s)
            .map(|(v, _)| v.clone())
    }

    /// Keeps `value` until `exp_s`.
    pub fn insert(&self, digest: TokenDigest, value: T, exp_s: u64, now_s: u64) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, e)| *e > now_s);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(digest, (value, exp_s));
    }

    /// Entries held (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_map_stays_bounded() {
        let cache = VerifiedCache::new(2);
        cache.insert(digest("a"), 1, 100, 10);
        assert_eq!(cache.get(&digest("a"), 99), Some(1));
        assert_eq!(cache.get(&digest("a"), 100), None, "expired at exp");
        assert_eq!(cache.get(&digest("b"), 10), None);
        cache.insert(digest("b"), 2, 20, 10);
        // Full: the expired entry ("b" at now 50) is swept to make room.
        cache.insert(digest("c"), 3, 200, 50);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&digest("c"), 50), Some(3));
        // Full of live entries: cleared rather than grown.
        cache.insert(digest("d"), 4, 200, 50);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&digest("d"), 50), Some(4));
    }
}
