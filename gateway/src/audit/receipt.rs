//! Receipts: the providing node's signed statement that it answered a request — request id,
//! request and response digests, status, and the sequence of its own audit record. It
//! travels back in the trailers (`x-tongban-receipt`) and the home node keeps it in its own
//! record, so each side can prove what the other answered.

use crate::trust::{jwt_decoding_key, NodeJwtSigner};
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Trailer carrying the receipt.
pub use tongban_proto::metadata::RECEIPT as TRAILER;

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

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("cannot sign the receipt: {0}")]
    Sign(String),
    #[error("receipt does not verify: {0}")]
    Invalid(String),
}

/// Signs a receipt with an Ed25519 node key (see [`sign_with`] for any node key).
pub fn sign(key: &EncodingKey, claims: &ReceiptClaims) -> Result<String, ReceiptError> {
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, key)
        .map_err(|e| ReceiptError::Sign(e.to_string()))
}

/// Signs a receipt with the node key, in the algorithm of its type.
pub fn sign_with(key: &NodeJwtSigner, claims: &ReceiptClaims) -> Result<String, ReceiptError> {
    key.sign(claims)
        .map_err(|e| ReceiptError::Sign(e.to_string()))
}

/// Verifies a receipt with the providing node's raw public key, for `issuer`.
pub fn verify(token: &str, issuer: &str, public_key: &[u8]) -> Result<ReceiptClaims, ReceiptError> {
    let (key, alg) = jwt_decoding_key(public_key);
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    v.set_issuer(&[issuer]);
    jsonwebtoken::decode::<ReceiptClaims>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| ReceiptError::Invalid(e.to_string()))
}
