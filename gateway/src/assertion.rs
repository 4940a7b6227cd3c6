//! Caller assertions: across the boundary the home node vouches for its caller with a
//! short-lived token signed by its node key (EdDSA), bound to the request id, service and
//! method. The providing node verifies it with the public key of the mTLS client certificate
//! that carried the call, so it never needs the home city's identity provider, and refuses
//! an assertion id it has seen before (replay cache in the node's store).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::{Keyspace, Store, StoreError};
use crate::trust::{jwt_decoding_key, NodeJwtSigner};
use jsonwebtoken::Validation;
use serde::{Deserialize, Serialize};

/// Metadata carrying the assertion from the home node to the providing node.
pub use tongban_proto::metadata::CALLER_ASSERTION as HEADER;
/// Lifetime of an assertion the home node signs.
pub const TTL: Duration = Duration::from_secs(30);
/// Longest lifetime a providing node accepts.
pub const MAX_TTL: Duration = Duration::from_secs(60);
/// Clock skew tolerated between nodes.
const LEEWAY_S: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    /// Home city (must be the city of the mTLS peer).
    pub iss: String,
    /// Providing city.
    pub aud: String,
    /// Caller organisation.
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub purpose: String,
    /// Subject pseudonym at the home node, when the call is about a citizen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subj: Option<String>,
    /// The caller is the citizen the call is about, with their own `citizen` token: their
    /// own data needs no consent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own: bool,
    /// The kind of person behind the call: `official`, `citizen` or `system` (empty in
    /// assertions of nodes from before the principal crossed the boundary).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub knd: String,
    /// The person: an official's or system account's id as their city issued it; a
    /// citizen only as the home node's keyed pseudonym.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prs: String,
    /// Request id.
    pub rid: String,
    pub svc: String,
    pub mth: String,
    pub iat: u64,
    pub exp: u64,
    /// Unique assertion id.
    pub jti: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("missing caller assertion")]
    Missing,
    #[error("caller assertion is invalid: {0}")]
    Invalid(String),
    #[error("caller assertion does not match the call: {0}")]
    Mismatch(String),
    #[error("caller assertion lives longer than {}s", MAX_TTL.as_secs())]
    TooLong,
    #[error("caller assertion {0} was already used (replay)")]
    Replayed(String),
    #[error("replay cache failed: {0}")]
    Store(String),
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs assertions with the node key.
pub struct Signer {
    key: NodeJwtSigner,
}

impl Signer {
    /// `pkcs8` is the node's key (Ed25519: EdDSA; P-256: ES256).
    pub fn new(pkcs8: &[u8]) -> Self {
        Signer {
            key: NodeJwtSigner::from_pkcs8(pkcs8),
        }
    }

    pub fn sign(&self, claims: &AssertionClaims) -> Result<String, AssertionError> {
        self.key
            .sign(claims)
            .map_err(|e| AssertionError::Invalid(e.to_string()))
    }
}

/// What the providing node expects the assertion to say.
pub struct Expected<'a> {
    pub peer_city: &'a str,
    pub own_city: &'a str,
    pub request_id: &'a str,
    pub service: &'a str,
    pub method: &'a str,
}

/// Verifies an assertion with the peer node's raw public key (its type pins the algorithm).
pub fn verify(
    token: Option<&str>,
    peer_public_key: &[u8],
    expected: &Expected<'_>,
) -> Result<AssertionClaims, AssertionError> {
    let token = token.ok_or(AssertionError::Missing)?;
    let (key, alg) = jwt_decoding_key(peer_public_key);
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_S;
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.set_issuer(&[expected.peer_city]);
    v.set_audience(&[expected.own_city]);
    let claims = jsonwebtoken::decode::<AssertionClaims>(token, &key, &v)
        .map_err(|e| AssertionError::Invalid(e.to_string()))?
        .claims;
    if claims.exp.saturating_sub(claims.iat) > MAX_TTL.as_secs() {
        return Err(AssertionError::TooLong);
    }
    for (what, got, want) in [
        ("request id", &claims.rid, expected.request_id),
        ("service", &claims.svc, expected.service),
        ("method", &claims.mth, expected.method),
    ] {
        if got != want {
            return Err(AssertionError::Mismatch(format!(
                "{what} `{got}` instead of `{want}`"
            )));
        }
    }
    Ok(claims)
}

/// Assertion ids seen and not yet expired, in the node's store so that a restart does not
/// reopen the window.
#[derive(Clone)]
pub struct ReplayCache {
    seen: Arc<dyn Keyspace>,
}

impl ReplayCache {
    pub fn open(store: &dyn Store) -> Result<ReplayCache, StoreError> {
        Ok(ReplayCache {
            seen: store.keyspace("assertion.replay")?,
        })
    }

    /// Records `jti` until `exp`; refuses one already recorded.
    pub fn check_and_remember(&self, jti: &str, exp: u64) -> Result<(), AssertionError> {
        let fresh = self
            .seen
            .insert_new(jti.as_bytes(), &exp.to_be_bytes())
            .map_err(|e| AssertionError::Store(e.to_string()))?;
        if fresh {
            Ok(())
        } else {
            Err(AssertionError::Replayed(jti.to_string()))
        }
    }

    /// Forgets ids whose assertions have expired (plus leeway).
    pub fn purge(&self) -> usize {
        let cutoff = now_s().saturating_sub(LEEWAY_S);
        let expired: Vec<Vec<u8>> = self
            .seen
            .scan_prefix(b"")
            .flatten()
            .filter(|(_, v)| {
                <[u8; 8]>::try_from(v.as_slice())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0)
                    < cutoff
            })
            .map(|(k, _)| k)
            .collect();
        expired
            .iter()
            .filter(|k| self.seen.remove(k).is_ok())
            .count()
    }
}
