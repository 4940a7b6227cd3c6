//! Caller assertions: across the boundary the home node vouches for its caller with a
//! short-lived token signed by its node key (EdDSA), bound to the request id, service and
//! method, and to the mTLS connection that carries it (`chb`: a digest of that
//! connection's TLS exporter, RFC 8446 §7.5 / RFC 5705, which both ends compute and nobody
//! else can). The providing node verifies it with the public key of the mTLS client
//! certificate that carried the call, so it never needs the home city's identity provider;
//! it refuses an assertion made for another connection (so one replayed to another replica
//! of the city, or after a restart, is refused without any shared state) and an assertion
//! id it has seen on this node (a replay cache in memory, bounded by the assertions'
//! lifetime).
//!
//! Two forms cross the boundary (`docs/audit-format.md`, "The caller assertion"): a JWT
//! signed with the node key (the default, `[tls] caller_assertion = "jwt"`), or
//! `mac1.<claims>.<tag>`, the same claims authenticated with HMAC-SHA256 under a key both
//! ends export from the TLS connection (`"mac"`): no signature per call, and bound to the
//! connection by its key. A providing node accepts both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Channel binding: the [`ChannelBinding`] of the mTLS connection the assertion was
    /// made for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chb: String,
}

pub use crate::trust::{ChannelBinding, BINDING_LABEL};

impl AssertionClaims {
    /// An official `person` of `org` in `iss` calling `svc`/`mth` in `aud` as request `rid`
    /// for case handling: living [`TTL`] from now, with a fresh id, not yet bound to a
    /// connection (`chb`). For tools and tests that speak as a node.
    pub fn official(
        iss: &str,
        aud: &str,
        org: &str,
        person: &str,
        rid: &str,
        svc: &str,
        mth: &str,
    ) -> Self {
        let now = now_s();
        AssertionClaims {
            iss: iss.into(),
            aud: aud.into(),
            sub: org.into(),
            roles: vec![],
            purpose: "case-handling".into(),
            subj: None,
            own: false,
            knd: "official".into(),
            prs: person.into(),
            rid: rid.into(),
            svc: svc.into(),
            mth: mth.into(),
            iat: now,
            exp: now + TTL.as_secs(),
            jti: tongban_telemetry::trace::unique_id(),
            chb: String::new(),
        }
    }
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
    #[error("caller assertion is not bound to the tls connection that carried it (chb)")]
    Unbound,
    #[error("caller assertion was made for another tls connection (replayed?)")]
    OtherConnection,
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The prefix of an assertion's MAC form.
pub const MAC_PREFIX: &str = "mac1.";

/// Which form of assertion the home node sends its peers (`[tls] caller_assertion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Form {
    /// A JWT signed with the node key.
    #[default]
    Jwt,
    /// `mac1.<claims>.<tag>`: HMAC-SHA256 under the connection's exported key.
    Mac,
}

/// Signs assertions with the node key.
pub struct Signer {
    key: NodeJwtSigner,
    form: Form,
}

impl Signer {
    /// `pkcs8` is the node's key (Ed25519: EdDSA; P-256: ES256).
    pub fn new(pkcs8: &[u8]) -> Self {
        Self::with_form(pkcs8, Form::Jwt)
    }

    /// A signer whose [`Self::seal`] makes assertions of `form`.
    pub fn with_form(pkcs8: &[u8], form: Form) -> Self {
        Signer {
            key: NodeJwtSigner::from_pkcs8(pkcs8),
            form,
        }
    }

    /// The assertion as a JWT signed with the node key.
    pub fn sign(&self, claims: &AssertionClaims) -> Result<String, AssertionError> {
        self.key
            .sign(claims)
            .map_err(|e| AssertionError::Invalid(e.to_string()))
    }

    /// The assertion for the connection of `binding`, in this signer's form (`claims.chb`
    /// must already name it), and the digest of its claims ([`claims_digest`]).
    pub fn seal(
        &self,
        claims: &AssertionClaims,
        binding: &ChannelBinding,
    ) -> Result<(String, [u8; 32]), AssertionError> {
        match self.form {
            Form::Jwt => {
                let token = self.sign(claims)?;
                let digest = claims_digest(&token)
                    .ok_or_else(|| AssertionError::Invalid("a jwt without claims".into()))?;
                Ok((token, digest))
            }
            Form::Mac => mac(claims, binding),
        }
    }
}

/// `mac1.<claims>.<tag>`: the claims' JSON in base64url (no padding), and the HMAC-SHA256
/// under the connection's MAC key of the ASCII bytes `mac1.<claims>`, in base64url.
fn mac(
    claims: &AssertionClaims,
    binding: &ChannelBinding,
) -> Result<(String, [u8; 32]), AssertionError> {
    use base64::Engine as _;
    let json = serde_json::to_vec(claims).map_err(|e| AssertionError::Invalid(e.to_string()))?;
    let mut out = String::with_capacity(MAC_PREFIX.len() + json.len() * 4 / 3 + 48);
    out.push_str(MAC_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&json, &mut out);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, binding.mac_key());
    let tag = aws_lc_rs::hmac::sign(&key, out.as_bytes());
    out.push('.');
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut out);
    Ok((out, sha256(&json)))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// The claims of an assertion in the MAC form, if its tag verifies under the connection's
/// key (and their digest); the issuer, audience and expiry checked as the JWT form's are.
fn verify_mac(
    token: &str,
    binding: Option<&ChannelBinding>,
    expected: &Expected<'_>,
) -> Result<(AssertionClaims, [u8; 32]), AssertionError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let binding = binding.ok_or_else(|| {
        AssertionError::Invalid(
            "a mac assertion holds only on the tls connection it was made for, and this is not a tls connection (made for another tls connection?)".into(),
        )
    })?;
    let (signed, tag) = token
        .rsplit_once('.')
        .ok_or_else(|| AssertionError::Invalid("a mac assertion has no tag".into()))?;
    let tag = b64
        .decode(tag)
        .map_err(|_| AssertionError::Invalid("the mac assertion's tag is not base64url".into()))?;
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, binding.mac_key());
    aws_lc_rs::hmac::verify(&key, signed.as_bytes(), &tag).map_err(|_| {
        AssertionError::Invalid(
            "the mac assertion's tag does not verify with this tls connection's key (made for another tls connection, or altered)".into(),
        )
    })?;
    let json = b64.decode(&signed[MAC_PREFIX.len()..]).map_err(|_| {
        AssertionError::Invalid("the mac assertion's claims are not base64url".into())
    })?;
    let claims: AssertionClaims = serde_json::from_slice(&json)
        .map_err(|e| AssertionError::Invalid(format!("the mac assertion's claims: {e}")))?;
    if claims.iss != expected.peer_city {
        return Err(AssertionError::Invalid(format!(
            "issuer `{}` is not the peer's city `{}`",
            claims.iss, expected.peer_city
        )));
    }
    if claims.aud != expected.own_city {
        return Err(AssertionError::Invalid(format!(
            "audience `{}` is not this city `{}`",
            claims.aud, expected.own_city
        )));
    }
    if claims.exp.saturating_add(LEEWAY_S) < now_s() {
        return Err(AssertionError::Invalid("expired".into()));
    }
    Ok((claims, sha256(&json)))
}

/// What the providing node expects the assertion to say.
pub struct Expected<'a> {
    pub peer_city: &'a str,
    pub own_city: &'a str,
    pub request_id: &'a str,
    pub service: &'a str,
    pub method: &'a str,
}

/// SHA-256 of the claims an assertion carries: the base64url-decoded bytes of a JWT's
/// payload, or of the MAC form's claims segment (what both records of the exchange keep as
/// `assertion_digest`). `None` for a token of neither shape.
pub fn claims_digest(token: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let segment = match token.strip_prefix(MAC_PREFIX) {
        Some(rest) => rest.split('.').next()?,
        None => token.split('.').nth(1)?,
    };
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()?;
    Some(sha256(&claims))
}

/// Verifies an assertion: a JWT with the peer node's raw public key (its type pins the
/// algorithm), the MAC form with the key of the connection that carried it (`binding`).
pub fn verify(
    token: Option<&str>,
    peer_public_key: &[u8],
    binding: Option<&ChannelBinding>,
    expected: &Expected<'_>,
) -> Result<AssertionClaims, AssertionError> {
    verify_digested(token, peer_public_key, binding, expected).map(|(claims, _)| claims)
}

/// [`verify`], with the digest of the claims ([`claims_digest`]; the MAC form's from the
/// bytes its check decoded).
pub fn verify_digested(
    token: Option<&str>,
    peer_public_key: &[u8],
    binding: Option<&ChannelBinding>,
    expected: &Expected<'_>,
) -> Result<(AssertionClaims, [u8; 32]), AssertionError> {
    let token = token.ok_or(AssertionError::Missing)?;
    let (claims, digest) = if token.starts_with(MAC_PREFIX) {
        verify_mac(token, binding, expected)?
    } else {
        let (key, alg) = jwt_decoding_key(peer_public_key);
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY_S;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[expected.peer_city]);
        v.set_audience(&[expected.own_city]);
        let claims = jsonwebtoken::decode::<AssertionClaims>(token, &key, &v)
            .map_err(|e| AssertionError::Invalid(e.to_string()))?
            .claims;
        let digest = claims_digest(token)
            .ok_or_else(|| AssertionError::Invalid("a jwt without claims".into()))?;
        (claims, digest)
    };
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
    Ok((claims, digest))
}

/// Checks that `claims` were made for the connection whose binding is `binding`.
pub fn check_binding(
    claims: &AssertionClaims,
    binding: Option<&ChannelBinding>,
) -> Result<(), AssertionError> {
    match binding {
        _ if claims.chb.is_empty() => Err(AssertionError::Unbound),
        Some(b) if b.as_str() == claims.chb => Ok(()),
        _ => Err(AssertionError::OtherConnection),
    }
}

/// Assertion ids seen on this node and not yet expired. In memory: an assertion is bound to
/// its TLS connection, so after a restart (every connection new) none can be replayed, and
/// entries live no longer than an assertion (`MAX_TTL` plus leeway).
#[derive(Clone, Default)]
pub struct ReplayCache {
    seen: Arc<Mutex<HashMap<String, u64>>>,
}

impl ReplayCache {
    pub fn new() -> ReplayCache {
        ReplayCache::default()
    }

    /// Records `jti` until `exp`; refuses one already recorded.
    pub fn check_and_remember(&self, jti: &str, exp: u64) -> Result<(), AssertionError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains_key(jti) {
            return Err(AssertionError::Replayed(jti.to_string()));
        }
        seen.insert(jti.to_string(), exp);
        Ok(())
    }

    /// Forgets ids whose assertions have expired (plus leeway).
    pub fn purge(&self) -> usize {
        let cutoff = now_s().saturating_sub(LEEWAY_S);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let before = seen.len();
        seen.retain(|_, exp| *exp >= cutoff);
        before - seen.len()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assertion_holds_only_on_the_connection_it_names() {
        let here = ChannelBinding::for_tests("here");
        let mut claims =
            AssertionClaims::official("jinan", "qingdao", "hrss", "zhang.wei", "r", "s.S", "M");
        // An older node's assertion, bound to nothing.
        assert!(matches!(
            check_binding(&claims, Some(&here)),
            Err(AssertionError::Unbound)
        ));
        claims.chb = "here".into();
        assert!(check_binding(&claims, Some(&here)).is_ok());
        assert!(matches!(
            check_binding(&claims, Some(&ChannelBinding::for_tests("there"))),
            Err(AssertionError::OtherConnection)
        ));
        assert!(matches!(
            check_binding(&claims, None),
            Err(AssertionError::OtherConnection)
        ));
    }

    #[test]
    fn the_mac_form_checks_its_issuer_audience_expiry_and_shape() {
        let (_, public, der) = crate::trust::test_node_key();
        let signer = Signer::with_form(&der, Form::Mac);
        let here = ChannelBinding::for_tests("here");
        let expected = Expected {
            peer_city: "jinan",
            own_city: "qingdao",
            request_id: "r",
            service: "s.S",
            method: "M",
        };
        let mut base =
            AssertionClaims::official("jinan", "qingdao", "hrss", "zhang.wei", "r", "s.S", "M");
        base.chb = "here".into();
        let claims = || base.clone();
        let verify_with = |c: &AssertionClaims| {
            let (token, _) = signer.seal(c, &here).unwrap();
            assert!(token.starts_with(MAC_PREFIX));
            verify(Some(&token), &public, Some(&here), &expected)
        };
        assert_eq!(verify_with(&claims()).unwrap(), claims());
        for (what, c) in [
            (
                "issuer",
                AssertionClaims {
                    iss: "zibo".into(),
                    ..claims()
                },
            ),
            (
                "audience",
                AssertionClaims {
                    aud: "zibo".into(),
                    ..claims()
                },
            ),
            (
                "expired",
                AssertionClaims {
                    iat: 1,
                    exp: 2,
                    ..claims()
                },
            ),
            (
                "request id",
                AssertionClaims {
                    rid: "other".into(),
                    ..claims()
                },
            ),
        ] {
            let e = verify_with(&c).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: {e}");
        }
        let (token, _) = signer.seal(&claims(), &here).unwrap();
        for bad in [
            MAC_PREFIX.to_string(),
            format!("{MAC_PREFIX}e30"),
            format!("{MAC_PREFIX}e30.***"),
            token.replace('.', ""),
        ] {
            assert!(
                verify(Some(&bad), &public, Some(&here), &expected).is_err(),
                "{bad}"
            );
        }
        // Both forms carry the same claims bytes, so the same digest.
        let jwt = signer.sign(&claims()).unwrap();
        let digest = claims_digest(&token).unwrap();
        assert_eq!(claims_digest(&jwt), Some(digest));
        let json = serde_json::to_vec(&claims()).unwrap();
        assert_eq!(
            digest,
            <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(&json))
        );
        assert_eq!(claims_digest("not a token"), None);
        // The signed form still verifies with the node key, and needs no binding.
        assert_eq!(
            verify(Some(&jwt), &public, None, &expected).unwrap(),
            claims()
        );
    }

    #[test]
    fn the_replay_cache_refuses_an_id_twice_and_forgets_expired_ones() {
        let cache = ReplayCache::new();
        let now = now_s();
        cache.check_and_remember("a", now + 30).unwrap();
        assert!(matches!(
            cache.check_and_remember("a", now + 30),
            Err(AssertionError::Replayed(_))
        ));
        cache.check_and_remember("old", now - 60).unwrap();
        assert_eq!(cache.purge(), 1);
        assert_eq!(cache.len(), 1);
        assert!(cache.check_and_remember("a", now + 30).is_err());
    }
}
