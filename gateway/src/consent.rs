//! Citizens' consents (DESIGN §6): granted on the subject's home node, carried by the grantee
//! as `x-tongban-consent`, checked by the providing node for every call to a personal-data
//! service.
//!
//! A consent token is an EdDSA JWT signed with the issuing node's key. It names the grantee
//! (`city/org`), the target city, the service, the purpose, the expiry and a unique id. The
//! subject appears only as `sbj = SHA-256(domain ‖ id ‖ subject)`: the providing node, which
//! has the clear id in flight (`x-tongban-subject`), can check it; nobody holding only the
//! token learns who it is about. The issuing node stores its records under its keyed
//! pseudonym of the subject, and publishes revocations with its signed catalog.

use crate::audit::change::Change;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tongban_proto::audit::v1::ChangeKind;

use jsonwebtoken::Validation;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tongban_proto::consent::v1::consent_server::Consent as ConsentRpc;
use tongban_proto::consent::v1::{
    ConsentRecord, GrantRequest, GrantResponse, ListRequest, ListResponse, RevokeRequest,
    RevokeResponse,
};
use tongban_proto::federation::v1::RevokedConsent;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::auth::{require, Grant};
use crate::config::{validate_city_id, validate_org_id};

/// A consent's target city meaning every city of the federation: the subject lets the
/// grantee read their data wherever it is held (a federation-wide medical query).
pub const ANY_CITY: &str = "*";
use crate::error::{ApiError, BadField};
use crate::registry::validate_service_name;
use crate::store::kv::{Committed, Cond, KvStore, Snapshot, Txn};
use crate::store::StoreError;
use crate::subject::{validate_resident_id, Pseudonymizer};
use crate::verified::{self, VerifiedCache};

/// Metadata carrying the consent token.
pub use tongban_proto::metadata::CONSENT as HEADER;
/// Longest consent a node grants.
const MAX_VALIDITY_MS: i64 = 366 * 24 * 3600 * 1000;
/// Role of a portal that manages consents on behalf of citizens.
pub const PORTAL_ROLE: &str = "consent-portal";
/// Role of a citizen token (its `sub` is the citizen's resident identity number).
pub use crate::auth::CITIZEN_ROLE;

/// The consent id an audit record carries when a citizen, signed in with their own token,
/// called a personal-data service about themselves (no consent needed).
pub const OWN_DATA: &str = "own-data";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The subject binding of a consent.
pub fn subject_digest(id: &str, subject: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"tongban-consent-subject\0");
    h.update(id.as_bytes());
    h.update(b"\0");
    h.update(subject.to_ascii_uppercase().as_bytes());
    hex::encode(h.finalize())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsentClaims {
    /// Issuing (home) city.
    pub iss: String,
    pub jti: String,
    pub sbj: String,
    /// Grantee `city/org`.
    pub gnt: String,
    /// Target city.
    pub tgt: String,
    pub svc: String,
    /// The catalog items the consent covers (empty: the whole service, outside the
    /// catalog only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub itm: Vec<String>,
    pub pur: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("service {0} handles personal data: x-tongban-consent is required")]
    Missing(String),
    #[error("service {0} handles personal data: x-tongban-subject is required")]
    NoSubject(String),
    #[error("consent is invalid: {0}")]
    Invalid(String),
    #[error("consent was issued by `{0}`, whose node key is not known here")]
    UnknownIssuer(String),
    #[error("consent does not cover this call: {0}")]
    OutOfScope(String),
    #[error("consent {0} was revoked")]
    Revoked(String),
}

impl crate::error::ApiError for ConsentError {
    fn code(&self) -> tonic::Code {
        match self {
            ConsentError::NoSubject(_) => tonic::Code::InvalidArgument,
            _ => tonic::Code::PermissionDenied,
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            ConsentError::Missing(_) => "CONSENT_REQUIRED",
            ConsentError::NoSubject(_) => "SUBJECT_REQUIRED",
            ConsentError::Invalid(_) | ConsentError::UnknownIssuer(_) => "CONSENT_INVALID",
            ConsentError::OutOfScope(_) => "CONSENT_OUT_OF_SCOPE",
            ConsentError::Revoked(_) => "CONSENT_REVOKED",
        }
    }
    fn violations(&self) -> Vec<crate::error::FieldViolation> {
        let field = match self {
            ConsentError::NoSubject(_) => crate::subject::HEADER,
            ConsentError::Missing(_) => HEADER,
            _ => return Vec::new(),
        };
        vec![crate::error::FieldViolation::new(field, self.to_string())]
    }
}

/// What a call needs a consent for.
pub struct ConsentScope<'a> {
    pub subject: Option<&'a str>,
    pub caller: &'a str,
    pub target_city: &'a str,
    pub service: &'a str,
    /// The catalog item the call names, if any.
    pub catalog_code: Option<&'a str>,
    pub purpose: &'a str,
}

/// The id of the consent a call presents, unverified (the providing node verifies it); for
/// the home side's audit record.
pub fn presented_id(h: &http::HeaderMap) -> Option<String> {
    let token = h.get(HEADER)?.to_str().ok()?;
    jsonwebtoken::dangerous::insecure_decode::<ConsentClaims>(token)
        .ok()
        .map(|d| d.claims.jti)
        .filter(|id| id.len() <= 64)
}

/// Consents whose signature this node verified: the claims and the issuing node's key that
/// verified them (a cached consent counts only while that city's key is still the same).
pub type VerifiedConsents = VerifiedCache<(ConsentClaims, Arc<Vec<u8>>)>;

/// Seconds of clock skew tolerated on a consent's expiry.
const LEEWAY_S: u64 = 5;

/// A consent's claims once its signature holds (by `cache` when this node verified the same
/// token with the same issuer key before).
fn verified_claims(
    token: &str,
    issuer_key: &impl Fn(&str) -> Option<Arc<Vec<u8>>>,
    cache: &VerifiedConsents,
) -> Result<ConsentClaims, ConsentError> {
    let digest = verified::digest(token);
    let now = crate::assertion::now_s();
    if let Some((claims, key)) = cache.get(&digest, now) {
        if issuer_key(&claims.iss).is_some_and(|k| k == key) {
            return Ok(claims);
        }
    }
    let unverified = jsonwebtoken::dangerous::insecure_decode::<ConsentClaims>(token)
        .map_err(|e| ConsentError::Invalid(e.to_string()))?;
    let issuer = unverified.claims.iss;
    let key = issuer_key(&issuer).ok_or_else(|| ConsentError::UnknownIssuer(issuer.clone()))?;
    let (decoding, alg) = crate::trust::jwt_decoding_key(&key);
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_S;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "iss", "jti"]);
    v.set_issuer(&[&issuer]);
    let c = jsonwebtoken::decode::<ConsentClaims>(token, &decoding, &v)
        .map_err(|e| ConsentError::Invalid(e.to_string()))?
        .claims;
    cache.insert(
        digest,
        (c.clone(), key),
        c.exp.saturating_add(LEEWAY_S),
        now,
    );
    Ok(c)
}

/// Checks a consent token against the call. `issuer_key` gives the raw ed25519 key of a
/// city's node; `revoked` says whether that city revoked a consent id. Scope, expiry and
/// revocation are checked on every call; `cache` spares only the signature check of a
/// token verified before.
pub fn verify(
    token: Option<&str>,
    scope: &ConsentScope<'_>,
    issuer_key: impl Fn(&str) -> Option<Arc<Vec<u8>>>,
    revoked: impl Fn(&str, &str) -> bool,
    cache: &VerifiedConsents,
) -> Result<ConsentClaims, ConsentError> {
    let token = token.ok_or_else(|| ConsentError::Missing(scope.service.to_string()))?;
    let subject = scope
        .subject
        .ok_or_else(|| ConsentError::NoSubject(scope.service.to_string()))?;
    let c = verified_claims(token, &issuer_key, cache)?;
    let out = |what: &str, got: &str, want: &str| {
        ConsentError::OutOfScope(format!("{what} is `{got}`, the call needs `{want}`"))
    };
    if c.sbj != subject_digest(&c.jti, subject) {
        return Err(ConsentError::OutOfScope("it is for another subject".into()));
    }
    if c.gnt != scope.caller {
        return Err(out("grantee", &c.gnt, scope.caller));
    }
    // `*`: wherever in the federation the subject's data is (a federation-wide query).
    if c.tgt != ANY_CITY && c.tgt != scope.target_city {
        return Err(out("target city", &c.tgt, scope.target_city));
    }
    if c.svc != scope.service {
        return Err(out("service", &c.svc, scope.service));
    }
    match scope.catalog_code {
        Some(code) if !c.itm.iter().any(|i| i == code) => {
            return Err(ConsentError::OutOfScope(if c.itm.is_empty() {
                format!("it names no catalog item, and the call is for item {code} (a consent covers only the items it names)")
            } else {
                format!(
                    "it names the items {}, and the call is for item {code}",
                    c.itm.join(", ")
                )
            }));
        }
        None if !c.itm.is_empty() => {
            return Err(ConsentError::OutOfScope(format!(
                "it names the items {}: the call must name one of them in x-tongban-catalog-code",
                c.itm.join(", ")
            )));
        }
        _ => {}
    }
    if c.pur != scope.purpose {
        return Err(out("purpose", &c.pur, scope.purpose));
    }
    if revoked(&c.iss, &c.jti) {
        return Err(ConsentError::Revoked(c.jti));
    }
    Ok(c)
}

/// Consent records of this city's subjects, in the city's shared store: a consent granted
/// on one replica is checked on every other, and a revocation reaches them by their watch.
#[derive(Clone)]
pub struct ConsentStore {
    store: Arc<dyn KvStore>,
    /// `consent.records/<pseudonym>/<id>` → ConsentRecord, and `consent.revoked/<id>` →
    /// expiry (ms) for the revocations this city publishes.
    snap: Snapshot,
}

const RECORDS: &str = "consent.records/";
const REVOKED: &str = "consent.revoked/";

impl ConsentStore {
    /// The consents in `store`, read from `snap` (a snapshot of the city's shared state).
    pub fn open(store: Arc<dyn KvStore>, snap: Snapshot) -> ConsentStore {
        ConsentStore { store, snap }
    }

    fn key(pseudonym: &str, id: &str) -> Vec<u8> {
        format!("{RECORDS}{pseudonym}/{id}").into_bytes()
    }

    /// The snapshot: notified when another replica grants or revokes.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    pub async fn insert(&self, pseudonym: &str, r: &ConsentRecord) -> Result<(), StoreError> {
        let txn = Txn::new().put(Self::key(pseudonym, &r.id), r.encode_to_vec());
        match self.store.commit(txn).await? {
            Committed::Applied(rev) => {
                self.snap.reach(rev).await;
                Ok(())
            }
            Committed::Conflict => Err(StoreError::Io("unconditional write refused".into())),
        }
    }

    pub fn list(&self, pseudonym: &str) -> Result<Vec<ConsentRecord>, StoreError> {
        let prefix = format!("{RECORDS}{pseudonym}/");
        Ok(self
            .snap
            .scan(prefix.as_bytes())
            .into_iter()
            .filter_map(|kv| ConsentRecord::decode(kv.value.as_slice()).ok())
            .collect())
    }

    /// Marks a consent revoked; `None` when the subject has no such consent. The record and
    /// the published revocation change together, and only if no replica changed the record
    /// in between (else it is read again).
    pub async fn revoke(
        &self,
        pseudonym: &str,
        id: &str,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        let key = Self::key(pseudonym, id);
        loop {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(None);
            };
            let Ok(mut r) = ConsentRecord::decode(kv.value.as_slice()) else {
                return Ok(None);
            };
            r.revoked = true;
            let txn = Txn::new()
                .when(Cond::Unchanged(key.clone(), kv.revision))
                .put(key.clone(), r.encode_to_vec())
                .put(
                    format!("{REVOKED}{id}").into_bytes(),
                    r.expires_at_ms.to_be_bytes().to_vec(),
                );
            if let Committed::Applied(rev) = self.store.commit(txn).await? {
                self.snap.reach(rev).await;
                return Ok(Some(r));
            }
        }
    }

    /// Revocations still worth publishing (not yet expired).
    pub fn revocations(&self) -> Vec<RevokedConsent> {
        let now = now_ms();
        self.snap
            .scan(REVOKED.as_bytes())
            .into_iter()
            .filter_map(|kv| {
                let exp = <[u8; 8]>::try_from(kv.value.as_slice())
                    .map(i64::from_be_bytes)
                    .ok()?;
                let id = kv.key.strip_prefix(REVOKED.as_bytes())?;
                (exp > now).then(|| RevokedConsent {
                    id: String::from_utf8_lossy(id).into_owned(),
                    expires_at_ms: exp,
                })
            })
            .collect()
    }
}

/// The set of revoked ids of one city, as published.
pub fn revoked_set(list: &[RevokedConsent]) -> HashSet<String> {
    list.iter().map(|r| r.id.clone()).collect()
}

/// Publishes this node's consent revocations to its peers (the catalog does, signed).
pub trait Republish: Send + Sync {
    fn republish(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, Status>> + Send + '_>>;
}

/// The Consent API on the caller listener.
pub struct ConsentApi {
    pub city: String,
    pub store: ConsentStore,
    pub pseudonyms: Arc<Pseudonymizer>,
    /// The federation's catalog: the items a consent may name.
    pub items: Arc<tongban_catalog::Catalog>,
    pub key: crate::trust::NodeJwtSigner,
    /// Publishes the node's revocations (with its signed catalog) after a revoke.
    pub publisher: Arc<dyn Republish>,
    /// Grants and revocations are records in the node's chain.
    pub auditor: Arc<crate::audit::Auditor>,
}

/// Why the Consent API refused or failed a request (beyond authentication, roles and
/// fields, which have their own errors).
#[derive(Debug, thiserror::Error)]
pub enum ConsentApiError {
    #[error("this subject has no consent `{0}`")]
    NotFound(String),
    #[error("cannot sign the consent: {0}")]
    Sign(String),
    #[error("consent storage failed: {0}")]
    Storage(String),
    /// The city's shared store (etcd) cannot be reached: nothing was written.
    #[error("consent not written, try again: {0}")]
    StoreUnavailable(String),
}

impl ApiError for ConsentApiError {
    fn code(&self) -> tonic::Code {
        match self {
            ConsentApiError::NotFound(_) => tonic::Code::NotFound,
            ConsentApiError::Sign(_) | ConsentApiError::Storage(_) => tonic::Code::Internal,
            ConsentApiError::StoreUnavailable(_) => tonic::Code::Unavailable,
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            ConsentApiError::NotFound(_) => "CONSENT_NOT_FOUND",
            ConsentApiError::Sign(_) => "CONSENT_SIGNING",
            ConsentApiError::Storage(_) => "CONSENT_STORE",
            ConsentApiError::StoreUnavailable(_) => "STORE_UNAVAILABLE",
        }
    }
}

crate::into_status!(ConsentApiError);

/// Most catalog items one consent may name.
const MAX_ITEMS: usize = 32;

impl ConsentApi {
    /// The items of a grant for `service`, each checked against the catalog (a data item
    /// only through the service that serves it); sorted, without repeats.
    fn items_of(&self, service: &str, items: &[String]) -> Result<Vec<String>, Status> {
        if items.len() > MAX_ITEMS {
            return Err(
                BadField::new("items", format!("at most {MAX_ITEMS} items per consent")).into(),
            );
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, code) in items.iter().enumerate() {
            let field = format!("items[{i}]");
            tongban_proto::metadata::check_catalog_code(code)
                .map_err(|m| BadField::new(field.clone(), m))?;
            if self.items.personal_data(code).is_none() {
                return Err(BadField::new(
                    field,
                    format!("catalog item `{code}` is not in the federation's catalog"),
                )
                .into());
            }
            if let Some(d) = self.items.data_item(code).filter(|d| d.service != service) {
                return Err(BadField::new(
                    field,
                    format!(
                        "catalog item `{code}` is served by {}, not by {service}",
                        d.service
                    ),
                )
                .into());
            }
            out.push(code.clone());
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// A portal acts for any subject; a citizen only for itself. Either way a person (or a
    /// named system account) is behind it: a subject's consents are personal data.
    async fn authorise<T>(&self, req: &Request<T>, subject: &str) -> Result<Caller, Status> {
        let caller = crate::auth::principal_of(req)?;
        caller.require_person()?;
        validate_resident_id(subject).map_err(|m| BadField::new("subject", m))?;
        let pseudonym = self.pseudonyms.pseudonym(subject);
        require(
            &caller,
            "manage this subject's consents",
            &[Grant::Role(PORTAL_ROLE), Grant::Citizen(&pseudonym)],
        )?;
        Ok(caller)
    }
}

fn storage(e: StoreError) -> Status {
    if let StoreError::Unavailable(why) = &e {
        // etcd down or partitioned away: the caller may try again; nothing was written.
        tracing::warn!(error = %why, "consent not written: the shared store is unreachable");
        return ConsentApiError::StoreUnavailable(why.clone()).into();
    }
    tracing::error!(error = %e, "consent storage failure");
    ConsentApiError::Storage(e.to_string()).into()
}

#[tonic::async_trait]
impl ConsentRpc for ConsentApi {
    async fn grant(&self, req: Request<GrantRequest>) -> Result<Response<GrantResponse>, Status> {
        let subject = req.get_ref().subject.clone();
        let caller = self.authorise(&req, &subject).await?;
        let g = req.into_inner();
        let bad = |field: &'static str| move |m: String| Status::from(BadField::new(field, m));
        let (gcity, gorg) = g
            .grantee
            .split_once('/')
            .ok_or_else(|| bad("grantee")("grantee must be city/org".into()))?;
        validate_city_id(gcity).map_err(bad("grantee"))?;
        validate_org_id(gorg).map_err(bad("grantee"))?;
        if g.target_city != ANY_CITY {
            validate_city_id(&g.target_city).map_err(bad("target_city"))?;
        }
        validate_service_name(&g.service).map_err(bad("service"))?;
        validate_org_id(&g.purpose).map_err(|_| {
            bad("purpose")("purpose must be lowercase ascii letters, digits and '-'".into())
        })?;
        let items = self.items_of(&g.service, &g.items)?;
        let now = now_ms();
        if g.expires_at_ms <= now || g.expires_at_ms > now + MAX_VALIDITY_MS {
            return Err(bad("expires_at_ms")(
                "expires_at_ms must be in the future and at most a year ahead".into(),
            ));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let claims = ConsentClaims {
            iss: self.city.clone(),
            jti: id.clone(),
            sbj: subject_digest(&id, &subject),
            gnt: g.grantee.clone(),
            tgt: g.target_city.clone(),
            svc: g.service.clone(),
            itm: items.clone(),
            pur: g.purpose.clone(),
            iat: u64::try_from(now / 1000).unwrap_or(0),
            exp: u64::try_from(g.expires_at_ms / 1000).unwrap_or(0),
        };
        let token = self
            .key
            .sign(&claims)
            .map_err(|e| ConsentApiError::Sign(e.to_string()))?;
        let record = ConsentRecord {
            id,
            grantee: g.grantee,
            target_city: g.target_city,
            service: g.service,
            purpose: g.purpose,
            expires_at_ms: g.expires_at_ms,
            revoked: false,
            granted_at_ms: now,
            items,
        };
        let pseudonym = self.pseudonyms.pseudonym(&subject);
        self.store
            .insert(&pseudonym, &record)
            .await
            .map_err(storage)?;
        self.auditor
            .record_change(
                Change::new(&self.city, ChangeKind::ConsentGranted, &record.id)
                    .by(&caller)
                    .consent(&pseudonym, &record),
            )
            .await?;
        tracing::info!(consent = %record.id, by = %caller.id(), grantee = %record.grantee, "consent granted");
        Ok(Response::new(GrantResponse {
            consent: Some(record),
            token,
        }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let subject = req.get_ref().subject.clone();
        self.authorise(&req, &subject).await?;
        let consents = self
            .store
            .list(&self.pseudonyms.pseudonym(&subject))
            .map_err(storage)?;
        Ok(Response::new(ListResponse { consents }))
    }

    async fn revoke(
        &self,
        req: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let subject = req.get_ref().subject.clone();
        let caller = self.authorise(&req, &subject).await?;
        let id = req.into_inner().id;
        let pseudonym = self.pseudonyms.pseudonym(&subject);
        let record = self
            .store
            .revoke(&pseudonym, &id)
            .await
            .map_err(storage)?
            .ok_or_else(|| ConsentApiError::NotFound(id.clone()))?;
        self.auditor
            .record_change(
                Change::new(&self.city, ChangeKind::ConsentRevoked, &record.id)
                    .by(&caller)
                    .consent(&pseudonym, &record),
            )
            .await?;
        self.publisher.republish().await?;
        tracing::info!(consent = %id, by = %caller.id(), "consent revoked");
        Ok(Response::new(RevokeResponse {
            consent: Some(record),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};

    fn key() -> (crate::trust::NodeJwtSigner, Arc<Vec<u8>>) {
        let der = crate::trust::generate_ed25519_pkcs8_v1().unwrap();
        let public = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        (
            crate::trust::NodeJwtSigner::from_pkcs8(&der),
            Arc::new(public),
        )
    }

    #[test]
    fn a_cached_consent_is_still_checked_for_key_scope_and_revocation() {
        let (signer, public) = key();
        let (_, other_public) = key();
        let subject = "370102198503120021";
        let now = crate::assertion::now_s();
        let claims = ConsentClaims {
            iss: "jinan".into(),
            jti: "c-1".into(),
            sbj: subject_digest("c-1", subject),
            gnt: "qingdao/hrss".into(),
            tgt: "jinan".into(),
            svc: "tongban.crosscity.v1.CrossCityService".into(),
            itm: vec!["JQ-03".into(), "JQ-08".into()],
            pur: "case-handling".into(),
            iat: now,
            exp: now + 600,
        };
        let token = signer.sign(&claims).unwrap();
        let scope = ConsentScope {
            subject: Some(subject),
            caller: "qingdao/hrss",
            target_city: "jinan",
            service: "tongban.crosscity.v1.CrossCityService",
            catalog_code: Some("JQ-03"),
            purpose: "case-handling",
        };
        let cache = VerifiedConsents::new(16);
        let same_key = |_: &str| Some(public.clone());
        let not_revoked = |_: &str, _: &str| false;
        assert_eq!(
            verify(Some(&token), &scope, same_key, not_revoked, &cache).unwrap(),
            claims
        );
        assert_eq!(cache.len(), 1, "verified once, then cached");
        // Each item it names passes; an item it does not name, or a call naming no item,
        // does not (a consent for JQ-03 never opens JQ-16).
        let jq08 = ConsentScope {
            catalog_code: Some("JQ-08"),
            ..scope
        };
        assert!(verify(Some(&token), &jq08, same_key, not_revoked, &cache).is_ok());
        for code in [Some("JQ-16"), Some("JQ-24"), None] {
            let other = ConsentScope {
                catalog_code: code,
                ..scope
            };
            let e = verify(Some(&token), &other, same_key, not_revoked, &cache).unwrap_err();
            assert!(matches!(e, ConsentError::OutOfScope(_)), "{code:?}: {e}");
        }
        // The same token again, from the cache: scope and revocation still apply.
        let wrong_purpose = ConsentScope {
            purpose: "statistics",
            ..scope
        };
        assert!(matches!(
            verify(Some(&token), &wrong_purpose, same_key, not_revoked, &cache),
            Err(ConsentError::OutOfScope(_))
        ));
        let scope = ConsentScope {
            purpose: "case-handling",
            ..wrong_purpose
        };
        assert!(matches!(
            verify(
                Some(&token),
                &scope,
                same_key,
                |_: &str, _: &str| true,
                &cache
            ),
            Err(ConsentError::Revoked(_))
        ));
        // The issuing city's key changed: the cached entry no longer counts.
        let new_key = |_: &str| Some(other_public.clone());
        assert!(matches!(
            verify(Some(&token), &scope, new_key, not_revoked, &cache),
            Err(ConsentError::Invalid(_))
        ));
    }
}
