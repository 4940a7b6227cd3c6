//! Caller authentication (DESIGN §2 step 1): a JWT from the city's own identity provider,
//! verified against its JWKS.
//!
//! - Algorithms are pinned per key: a JWK must carry `kid` and `alg` (RS256, ES256 or EdDSA),
//!   and a token is verified only with the algorithm of the key its `kid` names. `alg: none`
//!   and HMAC tokens never pass (no HMAC key is ever loaded).
//! - `exp`, `iss` and `aud` are required; `nbf` is checked when present; leeway is bounded.
//! - An unknown `kid` triggers at most one JWKS reload per [`REFRESH_MIN_INTERVAL`], so a key
//!   rotation at the identity provider is picked up without a restart.
//! - Verified tokens are cached by a SHA-256 of the whole token until their `exp`, in a
//!   bounded map; the token itself is never stored or logged.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::validate_org_id;
use crate::jwks_fetch::JwksUrl;
use crate::subject::Pseudonymizer;
use crate::verified::{self, VerifiedCache};
pub use tongban_proto::metadata::PersonKind;

/// Shortest interval between two JWKS reloads caused by unknown `kid`s.
pub const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// Why a caller was not authenticated. Every variant maps to UNAUTHENTICATED.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("missing authorization metadata (expected `Bearer <jwt>`)")]
    Missing,
    #[error("authorization metadata is not `Bearer <jwt>`")]
    NotBearer,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token header has no `kid`")]
    MissingKid,
    #[error("token key `{0}` is not in the identity provider's key set")]
    UnknownKid(String),
    #[error("token algorithm {got:?} does not match the key's pinned algorithm {pinned:?}")]
    AlgorithmMismatch { got: Algorithm, pinned: Algorithm },
    #[error("token is invalid: {0}")]
    Invalid(String),
    #[error("token is for city `{got}`, this node serves `{expected}`")]
    WrongCity { expected: String, got: String },
    #[error("token claim `org` is invalid: {0}")]
    BadOrg(String),
    #[error("a citizen token's `sub` must be the citizen's resident id: {0}")]
    BadCitizenSub(String),
    #[error("token has no `sub` claim: a call about a person's data needs the person behind it (the official's id, or the citizen)")]
    NoPerson,
}

/// What entitles a caller to an action.
#[derive(Debug, Clone, Copy)]
pub enum Grant<'a> {
    /// A role in the caller's token.
    Role(&'a str),
    /// Being this organisation of the node's city.
    Organisation(&'a str),
    /// A `citizen` token of the citizen with this keyed pseudonym.
    Citizen(&'a str),
}

/// The role of a citizen's own token (its `sub` is their resident id).
pub const CITIZEN_ROLE: &str = "citizen";
/// The role of a system account's token (a job acting for no person in particular).
pub const SYSTEM_ROLE: &str = "system";

/// The one role check: `caller` may `action` if any of `grants` holds.
pub fn require(
    caller: &Caller,
    action: &str,
    grants: &[Grant<'_>],
) -> Result<(), crate::error::Forbidden> {
    let holds = |g: &Grant<'_>| match g {
        Grant::Role(r) => caller.roles.iter().any(|x| x == r),
        Grant::Organisation(o) => caller.org == *o,
        Grant::Citizen(pseudonym) => caller.is_citizen(pseudonym),
    };
    if grants.iter().any(holds) {
        return Ok(());
    }
    let needs: Vec<String> = grants
        .iter()
        .map(|g| match g {
            Grant::Role(r) => format!("role {r}"),
            Grant::Organisation(o) => format!("to be organisation `{o}`"),
            Grant::Citizen(_) => format!("a {CITIZEN_ROLE} token of the subject"),
        })
        .collect();
    Err(crate::error::Forbidden {
        caller: caller.id(),
        action: action.to_string(),
        needs: needs.join(", or "),
    })
}

impl crate::error::ApiError for AuthError {
    fn code(&self) -> tonic::Code {
        tonic::Code::Unauthenticated
    }
    fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "TOKEN_MISSING",
            AuthError::NotBearer | AuthError::Malformed(_) | AuthError::MissingKid => {
                "TOKEN_MALFORMED"
            }
            AuthError::UnknownKid(_) => "TOKEN_KEY_UNKNOWN",
            AuthError::AlgorithmMismatch { .. } => "TOKEN_ALGORITHM_MISMATCH",
            AuthError::Invalid(_) | AuthError::BadOrg(_) | AuthError::BadCitizenSub(_) => {
                "TOKEN_INVALID"
            }
            AuthError::NoPerson => "TOKEN_NO_PERSON",
            AuthError::WrongCity { .. } => "TOKEN_WRONG_CITY",
        }
    }
}

crate::into_status!(AuthError);

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read jwks {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid jwks: {0}")]
    Invalid(String),
    #[error("{0}")]
    Fetch(String),
}

/// The principal behind a call, made once from the caller's token by the authentication
/// layer of the listener ([`Authenticator::authenticate_request`]) and read by every later
/// step ([`principal_of`]): the organisation of this city, the person and their roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub city: String,
    pub org: String,
    pub roles: Vec<String>,
    /// Official (the default), citizen (role `citizen`) or system account (role `system`).
    pub kind: PersonKind,
    /// An official's or system account's id as their identity provider issued it (the
    /// token's `sub`); a citizen's keyed pseudonym (never the resident id). Empty when the
    /// token has no `sub`.
    pub person: String,
    /// The token's `jti`, when it has one.
    pub token_id: String,
    /// The token's expiry (Unix seconds).
    pub exp: u64,
}

impl Caller {
    /// `city/org`, the form policy rules use.
    pub fn id(&self) -> String {
        format!("{}/{}", self.city, self.org)
    }

    /// Whether this is the citizen whose keyed pseudonym is `pseudonym`, signed in.
    pub fn is_citizen(&self, pseudonym: &str) -> bool {
        self.kind == PersonKind::Citizen && !self.person.is_empty() && self.person == pseudonym
    }

    /// The person behind the call, or UNAUTHENTICATED naming the `sub` claim.
    pub fn require_person(&self) -> Result<&str, AuthError> {
        if self.person.is_empty() {
            Err(AuthError::NoPerson)
        } else {
            Ok(&self.person)
        }
    }

    /// What a node tells its provider about this caller.
    pub fn vouched(&self) -> tongban_proto::metadata::VouchedPrincipal {
        tongban_proto::metadata::VouchedPrincipal {
            kind: self.kind,
            city: self.city.clone(),
            org: self.org.clone(),
            person: self.person.clone(),
        }
    }
}

/// The outcome of the listener's authentication of one request, in its extensions.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Result<Caller, AuthError>);

/// The principal the listener's authentication layer made for a control-plane request, or
/// why there is none (UNAUTHENTICATED). Handlers never read a token themselves.
pub fn principal_of<T>(req: &tonic::Request<T>) -> Result<Caller, AuthError> {
    match req.extensions().get::<Authenticated>() {
        Some(a) => a.0.clone(),
        None => Err(AuthError::Missing),
    }
}

/// The same, taken out of the extensions of an HTTP request (the proxy: once per call, no
/// copy).
pub fn take_principal(ext: &mut http::Extensions) -> Result<Caller, AuthError> {
    match ext.remove::<Authenticated>() {
        Some(a) => a.0,
        None => Err(AuthError::Missing),
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    jti: String,
    exp: u64,
    city: String,
    org: String,
    #[serde(default)]
    roles: Vec<String>,
}

struct Key {
    alg: Algorithm,
    key: DecodingKey,
}

/// A JWKS with every key's algorithm pinned.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.iter().map(|(k, v)| (k, v.alg)).collect();
        kids.sort_by(|a, b| a.0.cmp(b.0));
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

impl KeySet {
    /// Its key ids, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Parses a JWKS document. Keys without `kid` or `alg`, or with an algorithm other than
    /// RS256, ES256 or EdDSA, are refused: nothing is guessed.
    pub fn parse(json: &str) -> Result<KeySet, JwksError> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| JwksError::Invalid(e.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in set.keys {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| JwksError::Invalid("a key has no `kid`".into()))?;
            let alg = match jwk.common.key_algorithm {
                Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(KeyAlgorithm::ES256) => Algorithm::ES256,
                Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
                Some(other) => {
                    return Err(JwksError::Invalid(format!(
                    "key `{kid}` has algorithm {other:?}; only RS256, ES256 and EdDSA are accepted"
                )))
                }
                None => {
                    return Err(JwksError::Invalid(format!(
                        "key `{kid}` has no `alg`: algorithms are pinned per key"
                    )))
                }
            };
            let key = DecodingKey::from_jwk(&jwk)
                .map_err(|e| JwksError::Invalid(format!("key `{kid}`: {e}")))?;
            if key.family() != alg.family() {
                return Err(JwksError::Invalid(format!(
                    "key `{kid}` is not a key for {alg:?}"
                )));
            }
            keys.insert(kid, Key { alg, key });
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    Url(JwksUrl),
}

impl JwksSource {
    pub async fn load(&self) -> Result<KeySet, JwksError> {
        let text = match self {
            JwksSource::File(p) => {
                tokio::fs::read_to_string(p)
                    .await
                    .map_err(|source| JwksError::Read {
                        path: p.display().to_string(),
                        source,
                    })?
            }
            JwksSource::Url(u) => u
                .fetch()
                .await
                .map_err(|e| JwksError::Fetch(e.to_string()))?,
        };
        KeySet::parse(&text)
    }
}

/// Settings of caller authentication.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub city: String,
    pub source: JwksSource,
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub refresh_interval: Duration,
    /// Verified tokens kept (`limits.verified_tokens`).
    pub cache_entries: usize,
}

/// Verifies callers' JWTs.
pub struct Authenticator {
    settings: AuthSettings,
    keys: ArcSwap<KeySet>,
    last_refresh: Mutex<Instant>,
    cache: VerifiedCache<Caller>,
    /// Turns a citizen's resident id (`sub`) into the pseudonym the principal carries.
    pseudonyms: Arc<Pseudonymizer>,
    /// Refreshes by outcome, in the node's metrics (once [`Self::count_refreshes_in`]).
    refreshes: std::sync::OnceLock<crate::policy::Reloads>,
    /// Counts the key sets installed whose key ids differ from the one before (rotations).
    rotations: tokio::sync::watch::Sender<u64>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Authenticator {
    /// Loads the key set once; a node does not start without it.
    pub async fn new(
        settings: AuthSettings,
        pseudonyms: Arc<Pseudonymizer>,
    ) -> Result<Authenticator, JwksError> {
        let cache_entries = settings.cache_entries;
        let keys = settings.source.load().await?;
        if keys.is_empty() {
            return Err(JwksError::Invalid("the key set has no key".into()));
        }
        // The first unknown kid may refresh at once (a rotation right after start).
        let past = Instant::now()
            .checked_sub(REFRESH_MIN_INTERVAL)
            .unwrap_or_else(Instant::now);
        Ok(Authenticator {
            settings,
            keys: ArcSwap::from_pointee(keys),
            last_refresh: Mutex::new(past),
            refreshes: std::sync::OnceLock::new(),
            rotations: tokio::sync::watch::channel(0).0,
            cache: VerifiedCache::new(cache_entries),
            pseudonyms,
        })
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Reloads the key set now (the periodic refresh and unknown `kid`s call this). A key set
    /// that fails to load leaves the current one in place.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        if let Ok(mut t) = self.last_refresh.lock() {
            *t = Instant::now();
        }
        let loaded = self.settings.source.load().await;
        if let Some(r) = self.refreshes.get() {
            tongban_telemetry::NodeMetrics::outcome(r, loaded.is_ok());
        }
        let keys = loaded?;
        let n = keys.len();
        let rotated = keys.key_ids() != self.keys.load().key_ids();
        self.keys.store(Arc::new(keys));
        if rotated {
            self.rotations.send_modify(|g| *g += 1);
        }
        Ok(n)
    }

    /// The ids (`kid`) of the keys that verify callers' tokens now, sorted.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.load().key_ids()
    }

    /// A receiver that changes every time the key set changes its key ids.
    pub fn subscribe_rotations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rotations.subscribe()
    }

    /// Counts every key refresh from now on in `refreshes` (`ok` or `failed`).
    pub fn count_refreshes_in(&self, refreshes: crate::policy::Reloads) {
        let _ = self.refreshes.set(refreshes);
    }

    async fn refresh_for_unknown_kid(&self) {
        // Check and claim the refresh slot in one step, so concurrent unknown kids make one
        // fetch, not many.
        let due = self
            .last_refresh
            .lock()
            .map(|mut t| {
                let due = t.elapsed() >= REFRESH_MIN_INTERVAL;
                if due {
                    *t = Instant::now();
                }
                due
            })
            .unwrap_or(false);
        if due {
            match self.refresh().await {
                Ok(n) => tracing::info!(keys = n, "jwks reloaded for an unknown kid"),
                Err(error) => tracing::warn!(%error, "jwks reload failed"),
            }
        }
    }

    /// The authentication layer of every listener that serves callers: turns the request's
    /// `authorization` into the principal (or the reason there is none), once, into the
    /// request's extensions, where the proxy and the control plane read it.
    pub async fn authenticate_request<B>(&self, req: &mut http::Request<B>) {
        let auth = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let outcome = self.authenticate(auth).await;
        req.extensions_mut().insert(Authenticated(outcome));
    }

    /// Authenticates the value of an `authorization` header.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::NotBearer)?;
        let digest = verified::digest(token);
        let now = now_s();
        if let Some(caller) = self.cache.get(&digest, now) {
            return Ok(caller);
        }
        let (caller, exp) = self.verify(token).await?;
        self.cache.insert(digest, caller.clone(), exp, now);
        Ok(caller)
    }

    async fn verify(&self, token: &str) -> Result<(Caller, u64), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let kid = header.kid.clone().ok_or(AuthError::MissingKid)?;
        let mut keys = self.keys.load_full();
        if !keys.keys.contains_key(&kid) {
            self.refresh_for_unknown_kid().await;
            keys = self.keys.load_full();
        }
        let key = keys
            .keys
            .get(&kid)
            .ok_or_else(|| AuthError::UnknownKid(kid.clone()))?;
        if header.alg != key.alg {
            return Err(AuthError::AlgorithmMismatch {
                got: header.alg,
                pinned: key.alg,
            });
        }
        let mut v = Validation::new(key.alg);
        v.leeway = self.settings.leeway.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[&self.settings.issuer]);
        v.set_audience(&[&self.settings.audience]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        if c.city != self.settings.city {
            return Err(AuthError::WrongCity {
                expected: self.settings.city.clone(),
                got: c.city,
            });
        }
        validate_org_id(&c.org).map_err(AuthError::BadOrg)?;
        let kind = if c.roles.iter().any(|r| r == CITIZEN_ROLE) {
            PersonKind::Citizen
        } else if c.roles.iter().any(|r| r == SYSTEM_ROLE) {
            PersonKind::System
        } else {
            PersonKind::Official
        };
        let person = match kind {
            // The clear resident id goes no further than this function.
            PersonKind::Citizen => {
                crate::subject::validate_resident_id(&c.sub).map_err(AuthError::BadCitizenSub)?;
                self.pseudonyms.pseudonym(&c.sub)
            }
            _ => c.sub,
        };
        Ok((
            Caller {
                city: c.city,
                org: c.org,
                roles: c.roles,
                kind,
                person,
                token_id: c.jti,
                exp: c.exp,
            },
            c.exp,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};

    fn claims(city: &str) -> serde_json::Value {
        let now = now_s();
        serde_json::json!({
            "iss": "https://idp.test", "aud": "tongban:test", "sub": "s",
            "exp": now + 600, "city": city, "org": "hrss", "roles": ["r"],
        })
    }

    fn token(alg: Algorithm, kid: &str, key: &EncodingKey, city: &str) -> String {
        let mut h = Header::new(alg);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, &claims(city), key).unwrap()
    }

    fn test_pseudonyms() -> Arc<Pseudonymizer> {
        let dir = tempfile::tempdir().unwrap();
        Arc::new(Pseudonymizer::open(dir.path()).unwrap())
    }

    async fn authenticator(jwks: serde_json::Value) -> Authenticator {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        let a = Authenticator::new(
            AuthSettings {
                city: "test".into(),
                source: JwksSource::File(path),
                issuer: "https://idp.test".into(),
                audience: "tongban:test".into(),
                leeway: Duration::from_secs(30),
                refresh_interval: Duration::from_secs(300),
                cache_entries: 100,
            },
            test_pseudonyms(),
        )
        .await
        .unwrap();
        drop(dir);
        a
    }

    fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> serde_json::Value {
        let mut j = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
        j["kid"] = serde_json::json!(kid);
        j
    }

    #[tokio::test]
    async fn es256_rs256_and_eddsa_keys_each_pin_their_algorithm() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ec = EncodingKey::from_ec_der(&ec.serialize_der());
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let rsa = EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).unwrap();
        let ed_der = crate::trust::generate_ed25519_pkcs8_v1().unwrap();
        let ed = EncodingKey::from_ed_der(&ed_der);
        let ed_public = {
            use aws_lc_rs::signature::KeyPair as _;
            let kp = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&ed_der).unwrap();
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                kp.public_key().as_ref(),
            )
        };
        let jwks = serde_json::json!({ "keys": [
            jwk(&ec, Algorithm::ES256, "ec"),
            jwk(&rsa, Algorithm::RS256, "rsa"),
            { "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "ed", "x": ed_public },
        ]});
        let auth = authenticator(jwks).await;
        let bearer = |t: String| format!("Bearer {t}");
        for (alg, kid, key) in [
            (Algorithm::ES256, "ec", &ec),
            (Algorithm::RS256, "rsa", &rsa),
            (Algorithm::EdDSA, "ed", &ed),
        ] {
            let c = auth
                .authenticate(Some(&bearer(token(alg, kid, key, "test"))))
                .await
                .unwrap();
            assert_eq!(
                (c.org.as_str(), c.roles.as_slice()),
                ("hrss", &["r".to_string()][..])
            );
        }
        // A token naming the EC key but made with RS256: refused before any signature check.
        let confused = token(Algorithm::RS256, "ec", &rsa, "test");
        assert!(matches!(
            auth.authenticate(Some(&bearer(confused))).await,
            Err(AuthError::AlgorithmMismatch { .. })
        ));
        // Right key, wrong city claim.
        let other = token(Algorithm::ES256, "ec", &ec, "elsewhere");
        assert!(matches!(
            auth.authenticate(Some(&bearer(other))).await,
            Err(AuthError::WrongCity { .. })
        ));
    }

    #[test]
    fn key_sets_without_pinned_algorithms_or_with_hmac_are_refused() {
        let no_alg = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(KeySet::parse(no_alg)
            .unwrap_err()
            .to_string()
            .contains("alg"));
        let hmac = r#"{"keys":[{"kty":"oct","kid":"h","alg":"HS256","k":"c2VjcmV0"}]}"#;
        assert!(KeySet::parse(hmac).is_err());
        let no_kid = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert!(KeySet::parse(no_kid)
            .unwrap_err()
            .to_string()
            .contains("kid"));
    }
}
