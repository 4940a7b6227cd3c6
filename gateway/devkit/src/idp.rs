//! A development identity provider per city: an ed25519 signing key, its JWKS, and
//! `tongban token issue`. Real deployments point `auth.jwks_file` at their own provider's
//! key set; the claims a node expects are the same.
//!
//! Claims: `iss` ([`issuer`]), `aud` ([`audience`]), `exp`, `iat`, `nbf`, `sub`, `city`,
//! `org`, `roles`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid identity provider key: {0}")]
    Key(String),
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// The issuer the dev identity provider of `city` writes into `iss`.
pub fn issuer(city: &str) -> String {
    format!("https://idp.{city}.tongban")
}

/// The audience of tokens for `city`'s node.
pub fn audience(city: &str) -> String {
    format!("tongban:{city}")
}

/// The key id of the dev identity provider's key number `n`.
pub fn kid(city: &str, n: u32) -> String {
    format!("{city}-dev-{n}")
}

/// A city's development identity provider.
pub struct DevIdp {
    pub city: String,
    pub kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl DevIdp {
    /// A new key with the given key id, written as PKCS#8 v1 (RFC 8410) so that every
    /// common JWT library (PyJWT's `cryptography` included) reads it.
    pub fn generate(city: &str, kid: &str) -> Result<DevIdp, IdpError> {
        let der = tongban_gateway::trust::generate_ed25519_pkcs8_v1()
            .map_err(|e| IdpError::Key(e.to_string()))?;
        Self::from_pkcs8(city, kid, der)
    }

    fn from_pkcs8(city: &str, kid: &str, pkcs8: Vec<u8>) -> Result<DevIdp, IdpError> {
        let kp = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| IdpError::Key(e.to_string()))?;
        Ok(DevIdp {
            city: city.to_string(),
            kid: kid.to_string(),
            public: kp.public_key().as_ref().to_vec(),
            pkcs8,
        })
    }

    /// Loads a key written by [`Self::key_pem`].
    pub fn load(city: &str, kid: &str, key_path: &Path) -> Result<DevIdp, IdpError> {
        let pem = std::fs::read(key_path).map_err(|source| IdpError::Read {
            path: key_path.display().to_string(),
            source,
        })?;
        let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| IdpError::Key(e.to_string()))?;
        Self::from_pkcs8(city, kid, der.secret_der().to_vec())
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    /// The public key as a JWK (alg pinned to EdDSA).
    pub fn jwk(&self) -> serde_json::Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "use": "sig",
            "alg": "EdDSA",
            "kid": self.kid,
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.public),
        })
    }

    /// A JWKS document listing `idps`' keys (several during a rotation).
    pub fn jwks(idps: &[&DevIdp]) -> String {
        let keys: Vec<_> = idps.iter().map(|i| i.jwk()).collect();
        serde_json::to_string_pretty(&json!({ "keys": keys })).unwrap_or_default()
    }

    /// Signs arbitrary claims (tests use it for deliberately bad tokens).
    pub fn sign_claims(&self, claims: &serde_json::Value) -> Result<String, IdpError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_ed_der(&self.pkcs8);
        jsonwebtoken::encode(&header, claims, &key).map_err(|e| IdpError::Sign(e.to_string()))
    }

    /// The standard claims of a caller token valid for `ttl`.
    pub fn claims(
        &self,
        org: &str,
        roles: &[String],
        ttl: Duration,
        sub: &str,
    ) -> serde_json::Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        json!({
            "iss": issuer(&self.city),
            "aud": audience(&self.city),
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs(),
            "city": self.city,
            "org": org,
            "roles": roles,
        })
    }

    /// A caller token for `org` of this city.
    pub fn issue(
        &self,
        org: &str,
        roles: &[String],
        ttl: Duration,
        sub: &str,
    ) -> Result<String, IdpError> {
        self.sign_claims(&self.claims(org, roles, ttl, sub))
    }
}

/// Parses a duration such as `90s`, `15m`, `2h` or `1d`.
pub fn parse_ttl(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}
