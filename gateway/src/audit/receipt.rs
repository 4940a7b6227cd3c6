//! Receipts: the providing node's signed statement that it answered a request — request id,
//! request and response digests, status, and the sequence of its own audit record. It
//! travels back in the trailers (`x-tongban-receipt`) and the home node keeps it in its own
//! record, so each side can prove what the other answered.
//!
//! **One signature per group commit.** Signing each receipt (and verifying it at the home
//! node) was a fifth of a cross-city call's CPU. The providing node now signs, once per group
//! commit of its audit log, the root of a Merkle tree over the receipts of that group (a
//! *seal*), and each receipt carries its own claims, its place in the tree and the path of
//! sibling hashes up to the root, as batch-signed logs do (RFC 6962's hashing: `0x00` before
//! a leaf, `0x01` before two children, so a leaf can never pass for an inner node). A receipt
//! verifies, offline too, with the providing node's key alone: hash the claims, walk the path,
//! compare with the sealed root, check the seal's signature. The home node checks each seal's
//! signature once ([`VerifiedSeals`]) for all the receipts of a group.
//!
//! Format: `m1.<claims>.<index>.<path>.<seal>` — the claims as base64url JSON (hashed as
//! sent), the leaf's index, the concatenated 32-byte sibling hashes as base64url, and the seal
//! (a JWT by the node key: issuer, root, leaf count). Receipts in the older format, a JWT of
//! the claims, still verify.

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::trust::{jwt_decoding_key, NodeJwtSigner};
use crate::verified::{self, VerifiedCache};

/// Trailer carrying the receipt.
pub use tongban_proto::metadata::RECEIPT as TRAILER;

/// Prefix of a receipt under a sealed Merkle root.
const MERKLE_PREFIX: &str = "m1.";

type Hash = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptClaims {
    /// Providing city.
    pub iss: String,
    pub rid: String,
    /// Hex SHA-256 of the request and response streams.
    pub rqd: String,
    pub rsd: String,
    /// gRPC status code.
    pub st: i32,
    /// Sequence of the provider's audit record.
    pub seq: u64,
    pub iat: u64,
}

impl ReceiptClaims {
    /// The claims of a provider-side record committed at `seq`.
    pub fn of(record: &tongban_proto::audit::v1::AuditRecord, seq: u64, iat: u64) -> Self {
        ReceiptClaims {
            iss: record.node_city.clone(),
            rid: record.request_id.clone(),
            rqd: hex::encode(&record.request_digest),
            rsd: hex::encode(&record.response_digest),
            st: record.grpc_status,
            seq,
            iat,
        }
    }
}

/// What a seal signs: the root of one group's receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealClaims {
    /// Providing city.
    pub iss: String,
    /// Hex SHA-256 Merkle root.
    pub root: String,
    /// Leaves under the root.
    pub n: u64,
    pub iat: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("cannot sign the receipt: {0}")]
    Sign(String),
    #[error("receipt does not verify: {0}")]
    Invalid(String),
}

fn invalid(why: impl Into<String>) -> ReceiptError {
    ReceiptError::Invalid(why.into())
}

fn leaf_hash(claims_json: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(claims_json);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Every level of the tree over `leaves`, leaves first, root last. An odd node at the end of
/// a level moves up unchanged (it is never paired with a copy of itself).
fn levels(leaves: Vec<Hash>) -> Vec<Vec<Hash>> {
    let mut levels = vec![leaves];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let below = levels.last().map(Vec::as_slice).unwrap_or_default();
        let up = below
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node_hash(l, r),
                [one] => *one,
                _ => [0; 32],
            })
            .collect();
        levels.push(up);
    }
    levels
}

/// The sibling hashes from leaf `index` up to the root.
fn path(levels: &[Vec<Hash>], mut index: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for level in &levels[..levels.len().saturating_sub(1)] {
        if let Some(sibling) = level.get(index ^ 1) {
            out.extend_from_slice(sibling);
        }
        index /= 2;
    }
    out
}

/// The root that leaf `leaf` at `index` of `n` leads to through `path`.
fn root_from_path(leaf: Hash, mut index: u64, n: u64, path: &[u8]) -> Result<Hash, ReceiptError> {
    if index >= n {
        return Err(invalid(format!("leaf {index} of a tree of {n}")));
    }
    let mut siblings = path.chunks_exact(32);
    if !siblings.remainder().is_empty() {
        return Err(invalid("the path is not whole hashes"));
    }
    let (mut h, mut size) = (leaf, n);
    while size > 1 {
        if index ^ 1 < size {
            let s: Hash = siblings
                .next()
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| invalid("the path is too short"))?;
            h = if index & 1 == 0 {
                node_hash(&h, &s)
            } else {
                node_hash(&s, &h)
            };
        }
        index /= 2;
        size = size.div_ceil(2);
    }
    if siblings.next().is_some() {
        return Err(invalid("the path is too long"));
    }
    Ok(h)
}

/// The provider-side receipts of one group commit: their claims, hashed by the audit writer
/// as it frames the group; sealed (the root signed) by the first exchange of the group to
/// ask for its receipt, and the seal shared by the others.
#[derive(Default)]
pub struct ReceiptGroup {
    leaves: Vec<Vec<u8>>,
    sealed: OnceLock<Option<(Vec<Vec<Hash>>, String)>>,
}

impl ReceiptGroup {
    /// Adds the claims of a provider-side record; returns its leaf index.
    pub fn push(&mut self, claims: &ReceiptClaims) -> Option<usize> {
        let json = serde_json::to_vec(claims).ok()?;
        self.leaves.push(json);
        Some(self.leaves.len() - 1)
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The receipt of leaf `index`, signing the group's seal with `key` if no receipt of the
    /// group was asked for before.
    pub fn receipt(
        &self,
        index: usize,
        city: &str,
        key: &NodeJwtSigner,
    ) -> Result<String, ReceiptError> {
        let sealed = self.sealed.get_or_init(|| {
            let levels = levels(self.leaves.iter().map(|l| leaf_hash(l)).collect());
            let root = levels.last().and_then(|l| l.first()).copied()?;
            let seal = SealClaims {
                iss: city.to_string(),
                root: hex::encode(root),
                n: self.leaves.len() as u64,
                iat: crate::assertion::now_s(),
            };
            match key.sign(&seal) {
                Ok(jwt) => Some((levels, jwt)),
                Err(error) => {
                    tracing::error!(%error, "receipt seal signing failed");
                    None
                }
            }
        });
        let (levels, seal) = sealed
            .as_ref()
            .ok_or_else(|| ReceiptError::Sign("the group's seal could not be signed".into()))?;
        let leaf = self
            .leaves
            .get(index)
            .ok_or_else(|| ReceiptError::Sign(format!("no leaf {index} in the group")))?;
        Ok(format!(
            "{MERKLE_PREFIX}{}.{index}.{}.{seal}",
            B64.encode(leaf),
            B64.encode(path(levels, index))
        ))
    }
}

impl std::fmt::Debug for ReceiptGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptGroup")
            .field("leaves", &self.leaves.len())
            .finish()
    }
}

/// A record's place in its group's receipts.
#[derive(Debug, Clone)]
pub struct ReceiptLeaf {
    pub group: Arc<ReceiptGroup>,
    pub index: usize,
}

/// Seals whose signature this node verified, with the key that verified them.
pub type VerifiedSeals = VerifiedCache<(SealClaims, Arc<Vec<u8>>)>;

/// Most verified seals kept.
pub const SEALS_CAPACITY: usize = 4096;

/// How long a verified seal is kept: receipts of a group arrive within moments.
const SEAL_CACHE_S: u64 = 300;

/// Signs a receipt in the older format, a JWT of the claims with an Ed25519 node key (kept
/// for tools and tests; nodes seal groups).
pub fn sign(key: &EncodingKey, claims: &ReceiptClaims) -> Result<String, ReceiptError> {
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, key)
        .map_err(|e| ReceiptError::Sign(e.to_string()))
}

/// Verifies a receipt with the providing node's raw public key, for `issuer` (offline: no
/// cache).
pub fn verify(token: &str, issuer: &str, public_key: &[u8]) -> Result<ReceiptClaims, ReceiptError> {
    verify_with(
        token,
        issuer,
        &Arc::new(public_key.to_vec()),
        &VerifiedSeals::new(1),
    )
}

/// [`verify`], checking each seal's signature once while `seals` keeps it.
pub fn verify_with(
    token: &str,
    issuer: &str,
    public_key: &Arc<Vec<u8>>,
    seals: &VerifiedSeals,
) -> Result<ReceiptClaims, ReceiptError> {
    let Some(rest) = token.strip_prefix(MERKLE_PREFIX) else {
        return verify_jwt::<ReceiptClaims>(token, issuer, public_key);
    };
    let mut parts = rest.splitn(4, '.');
    let (Some(claims_b64), Some(index), Some(path_b64), Some(seal)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("a sealed receipt has four parts"));
    };
    let claims_json = B64
        .decode(claims_b64)
        .map_err(|e| invalid(format!("claims: {e}")))?;
    let claims: ReceiptClaims =
        serde_json::from_slice(&claims_json).map_err(|e| invalid(format!("claims: {e}")))?;
    if claims.iss != issuer {
        return Err(invalid(format!(
            "issued by `{}`, not `{issuer}`",
            claims.iss
        )));
    }
    let index: u64 = index
        .parse()
        .map_err(|_| invalid("index is not a number"))?;
    let path = B64
        .decode(path_b64)
        .map_err(|e| invalid(format!("path: {e}")))?;
    let seal = verified_seal(seal, issuer, public_key, seals)?;
    let root = root_from_path(leaf_hash(&claims_json), index, seal.n, &path)?;
    if hex::encode(root) != seal.root {
        return Err(invalid("the receipt is not under the sealed root"));
    }
    Ok(claims)
}

fn verified_seal(
    seal: &str,
    issuer: &str,
    public_key: &Arc<Vec<u8>>,
    seals: &VerifiedSeals,
) -> Result<SealClaims, ReceiptError> {
    let digest = verified::digest(seal);
    let now = crate::assertion::now_s();
    if let Some((claims, key)) = seals.get(&digest, now) {
        if key == *public_key && claims.iss == issuer {
            return Ok(claims);
        }
    }
    let claims = verify_jwt::<SealClaims>(seal, issuer, public_key)?;
    seals.insert(
        digest,
        (claims.clone(), public_key.clone()),
        now + SEAL_CACHE_S,
        now,
    );
    Ok(claims)
}

fn verify_jwt<T: serde::de::DeserializeOwned>(
    token: &str,
    issuer: &str,
    public_key: &[u8],
) -> Result<T, ReceiptError> {
    let (key, alg) = jwt_decoding_key(public_key);
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    v.set_issuer(&[issuer]);
    jsonwebtoken::decode::<T>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(i: u64) -> ReceiptClaims {
        ReceiptClaims {
            iss: "qingdao".into(),
            rid: format!("r-{i}"),
            rqd: "aa".repeat(32),
            rsd: "bb".repeat(32),
            st: 0,
            seq: 100 + i,
            iat: 1,
        }
    }

    fn key() -> (NodeJwtSigner, Arc<Vec<u8>>) {
        let (signer, public, _) = crate::trust::test_node_key();
        (signer, public)
    }

    #[test]
    fn every_receipt_of_groups_of_every_size_verifies_and_no_edit_does() {
        let (signer, public) = key();
        let (_, other) = key();
        for n in 1..=9u64 {
            let mut group = ReceiptGroup::default();
            for i in 0..n {
                assert_eq!(group.push(&claims(i)), Some(i as usize));
            }
            let seals = VerifiedSeals::new(16);
            for i in 0..n {
                let r = group.receipt(i as usize, "qingdao", &signer).unwrap();
                assert_eq!(
                    verify_with(&r, "qingdao", &public, &seals).unwrap(),
                    claims(i)
                );
                assert_eq!(verify(&r, "qingdao", &public).unwrap(), claims(i));
                assert!(verify(&r, "jinan", &public).is_err(), "wrong issuer");
                assert!(verify(&r, "qingdao", &other).is_err(), "wrong key");
                let parts: Vec<&str> = r.splitn(5, '.').collect();
                // Another leaf's index, a cut or extended path, edited claims: all refused.
                if n > 1 {
                    let moved =
                        format!("m1.{}.{}.{}.{}", parts[1], (i + 1) % n, parts[3], parts[4]);
                    assert!(
                        verify(&moved, "qingdao", &public).is_err(),
                        "n {n} i {i} moved"
                    );
                }
                let path = B64.decode(parts[3]).unwrap();
                if !path.is_empty() {
                    let cut = format!(
                        "m1.{}.{i}.{}.{}",
                        parts[1],
                        B64.encode(&path[32..]),
                        parts[4]
                    );
                    assert!(verify(&cut, "qingdao", &public).is_err());
                }
                let longer = [path.clone(), vec![7; 32]].concat();
                let long = format!("m1.{}.{i}.{}.{}", parts[1], B64.encode(longer), parts[4]);
                assert!(verify(&long, "qingdao", &public).is_err());
                let mut edited = claims(i);
                edited.st = 7;
                let e = B64.encode(serde_json::to_vec(&edited).unwrap());
                let forged = format!("m1.{e}.{i}.{}.{}", parts[3], parts[4]);
                assert!(verify(&forged, "qingdao", &public).is_err());
            }
            assert_eq!(seals.len(), 1, "one seal per group, verified once");
        }
    }

    #[test]
    fn receipts_in_the_older_format_still_verify() {
        let (_, public, der) = crate::trust::test_node_key();
        let jwt = sign(&EncodingKey::from_ed_der(&der), &claims(3)).unwrap();
        assert_eq!(verify(&jwt, "qingdao", &public).unwrap(), claims(3));
    }
}
