//! The data plane: a transparent gRPC proxy. It reads the path and metadata of a call, never
//! its payload, and forwards HTTP/2 frames to a local provider or across the boundary to the
//! peer node of the target city.
//!
//! The two entry points read top to bottom as the path of one call in DESIGN §2:
//! [`Proxy::from_caller`] is the home node (steps 1–4), [`Proxy::from_peer`] the providing
//! node (steps 5–8).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};

use crate::assertion::{self, AssertionClaims, ReplayCache};
use crate::audit::exchange::{self, Exchange, Receipts};
use crate::audit::Auditor;
use crate::auth::Authenticator;
use crate::catalog::Catalog;
use crate::catalog::{LocalService, Snapshot};
use crate::config::validate_org_id;
use crate::config::Limits;
use crate::consent;
use crate::federation::Peer;
use crate::grpc::{
    self, code_for_http_status, format_timeout, parse_timeout, RequestGuard, ResponseGuard,
    REQUEST_ID,
};
use crate::policy::{PolicyRequest, PolicyStore};
use crate::ratelimit::RateLimiter;
use crate::registry::validate_catalog_code;
use crate::subject::{self, Pseudonymizer};
use crate::trust::PeerIdentity;
use crate::upstream::EndpointSet;
use tongban_proto::audit::v1::Side;

/// Set by the node that hands the call to a provider: the city the call came from. Taken
/// from the peer certificate (or this node's own city), never from the caller.
pub use tongban_proto::metadata::ORIGIN_CITY;
/// Metadata naming the city that should serve the call.
pub use tongban_proto::metadata::TARGET_CITY;
/// Metadata naming the organisation, when several of one city offer the service.
pub use tongban_proto::metadata::TARGET_ORG;

/// Headers that describe one HTTP connection, not the call, and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];
/// Caller credentials stay with the node that verified them.
const NEVER_ACROSS: &[&str] = &["authorization", "cookie"];
/// Set by nodes only; whatever a caller (or the peer, for the first two) sends is dropped.
const NODE_ONLY: &[&str] = &[ORIGIN_CITY, CALLER, assertion::HEADER];
/// Set by the node that hands the call to a provider: `city/org` of the authenticated caller.
pub use tongban_proto::metadata::CALLER;
/// The catalog item the call is for, when a policy rule names catalog codes.
pub use tongban_proto::metadata::CATALOG_CODE;
/// Why the call is made; part of every authorisation.
pub use tongban_proto::metadata::PURPOSE;

/// Why a call was refused or failed, mapped to a gRPC status in one place ([`Self::status`]).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown city `{city}`: this federation knows {known}")]
    UnknownCity { city: String, known: String },
    #[error("service `{service}` is not offered by city `{city}`")]
    UnknownService { service: String, city: String },
    #[error("service `{service}` is not offered by any city of the federation")]
    UnknownServiceAnywhere { service: String },
    #[error("service `{service}` is offered by {cities}: set x-tongban-target-city")]
    AmbiguousCity { service: String, cities: String },
    #[error("service `{service}` is offered by organisations {orgs} of `{city}`: set x-tongban-target-org")]
    AmbiguousOrg {
        service: String,
        city: String,
        orgs: String,
    },
    #[error("this node serves only city `{own}`, not `{target}`: calls are not relayed through a third city")]
    NotRelayed { own: String, target: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Deadline(String),
    #[error("{}", .0.message())]
    Passthrough(Status),
}

impl ProxyError {
    /// The one mapping from proxy errors to gRPC status codes.
    pub fn status(&self) -> Status {
        let code = match self {
            ProxyError::BadRequest(_) | ProxyError::AmbiguousCity { .. } => Code::InvalidArgument,
            ProxyError::AmbiguousOrg { .. } => Code::InvalidArgument,
            ProxyError::UnknownCity { .. }
            | ProxyError::UnknownService { .. }
            | ProxyError::UnknownServiceAnywhere { .. } => Code::NotFound,
            ProxyError::NotRelayed { .. } | ProxyError::PermissionDenied(_) => {
                Code::PermissionDenied
            }
            ProxyError::Unauthenticated(_) => Code::Unauthenticated,
            ProxyError::ResourceExhausted(_) => Code::ResourceExhausted,
            ProxyError::Internal(_) => Code::Internal,
            ProxyError::Unavailable(_) => Code::Unavailable,
            ProxyError::Deadline(_) => Code::DeadlineExceeded,
            ProxyError::Passthrough(s) => return s.clone(),
        };
        Status::new(code, self.to_string())
    }
}

/// What a call asks for, read from its path and metadata only.
#[derive(Debug)]
struct Call {
    service: String,
    method: String,
    path: PathAndQuery,
    request_id: String,
    started: Instant,
    deadline: Instant,
    target_city: Option<String>,
    target_org: Option<String>,
}

impl Call {
    fn parse(parts: &Parts, limits: &Limits, request_id: String) -> Result<Call, ProxyError> {
        let bad = |m: String| ProxyError::BadRequest(m);
        let ct = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/grpc") {
            return Err(bad(format!(
                "content-type `{ct}` is not gRPC (application/grpc)"
            )));
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .ok_or_else(|| bad("request has no path".into()))?;
        let (service, method) = path
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'))
            .ok_or_else(|| {
                bad(format!(
                    "path `{}` is not /package.Service/Method",
                    path.path()
                ))
            })?;
        crate::registry::validate_service_name(service).map_err(bad)?;
        let timeout = match parts.headers.get("grpc-timeout") {
            None => limits.default_timeout,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(parse_timeout)
                .ok_or_else(|| bad(format!("grpc-timeout `{v:?}` is malformed")))?
                .min(limits.max_timeout),
        };
        let started = Instant::now();
        Ok(Call {
            service: service.to_string(),
            method: method.to_string(),
            request_id,
            started,
            deadline: started + timeout,
            target_city: header_str(&parts.headers, TARGET_CITY)?,
            target_org: header_str(&parts.headers, TARGET_ORG)?,
            path,
        })
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

fn header_str(h: &HeaderMap, name: &str) -> Result<Option<String>, ProxyError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .map(Some)
            .ok_or_else(|| ProxyError::BadRequest(format!("{name} is empty or not ascii"))),
    }
}

/// The caller's request id, or a new one. A caller-supplied id must be 1 to 64 characters of
/// `[A-Za-z0-9._-]`, since it keys the audit records of both cities.
fn request_id_of(h: &HeaderMap) -> Result<String, (String, ProxyError)> {
    match h.get(REQUEST_ID) {
        None => Ok(uuid::Uuid::new_v4().to_string()),
        Some(v) => {
            let ok = tongban_proto::metadata::is_request_id(v.as_bytes());
            match v.to_str() {
                Ok(s) if ok => Ok(s.to_string()),
                _ => Err((
                    uuid::Uuid::new_v4().to_string(),
                    ProxyError::BadRequest(format!(
                        "{REQUEST_ID} must be 1 to 64 characters of letters, digits, '.', '_' and '-'"
                    )),
                )),
            }
        }
    }
}

/// Why a call is made and about whom, from its metadata.
#[derive(Debug)]
struct Intent {
    purpose: String,
    catalog_code: Option<String>,
    /// Pseudonym of `x-tongban-subject` (the clear id is never kept).
    subject: Option<String>,
}

impl Intent {
    /// `vouched_purpose`: at the providing node, the purpose from the caller assertion,
    /// which overrides the metadata.
    fn parse(
        h: &HeaderMap,
        pseudonyms: &Pseudonymizer,
        vouched_purpose: Option<&str>,
    ) -> Result<Intent, ProxyError> {
        let bad = ProxyError::BadRequest;
        let purpose = match vouched_purpose {
            Some(p) => p.to_string(),
            None => header_str(h, PURPOSE)?
                .ok_or_else(|| bad(format!("{PURPOSE} is required (e.g. case-handling)")))?,
        };
        validate_org_id(&purpose).map_err(|_| {
            bad(format!(
                "{PURPOSE} must be lowercase ascii letters, digits and '-'"
            ))
        })?;
        let catalog_code = match h.get(CATALOG_CODE).map(|v| v.to_str()) {
            None => None,
            Some(Ok(c)) => {
                validate_catalog_code(c).map_err(bad)?;
                Some(c.to_string())
            }
            Some(Err(_)) => return Err(bad(format!("{CATALOG_CODE} is not ascii"))),
        };
        let subject = match h.get(subject::HEADER).map(|v| v.to_str()) {
            None => None,
            Some(Ok(id)) => {
                subject::validate_resident_id(id).map_err(bad)?;
                Some(pseudonyms.pseudonym(id))
            }
            Some(Err(_)) => return Err(bad(format!("{} is not ascii", subject::HEADER))),
        };
        Ok(Intent {
            purpose,
            catalog_code,
            subject,
        })
    }
}

impl Intent {
    /// Writes what the audit record keeps of the intent (never the clear subject id).
    fn describe(&self, ex: &mut Exchange) {
        ex.record.purpose = self.purpose.clone();
        ex.record.catalog_code = self.catalog_code.clone().unwrap_or_default();
        ex.record.subject_pseudonym = self.subject.clone().unwrap_or_default();
    }
}

/// Where a call goes.
enum Route {
    Local(Arc<LocalService>),
    Peer(Arc<Peer>),
}

/// What the proxy checks calls with (DESIGN §6).
pub struct TrustChecks {
    pub auth: Arc<Authenticator>,
    pub policy: Arc<PolicyStore>,
    pub signer: assertion::Signer,
    pub replay: ReplayCache,
    pub pseudonyms: Arc<Pseudonymizer>,
    pub rate: RateLimiter,
    /// This node's raw ed25519 public key (verifies the consents it issued).
    pub own_key: Arc<Vec<u8>>,
}

/// The proxy of one node.
pub struct Proxy {
    pub city: String,
    pub auditor: Arc<Auditor>,
    pub catalog: Arc<Catalog>,
    pub peers: BTreeMap<String, Arc<Peer>>,
    pub limits: Limits,
    pub trust: TrustChecks,
    /// Calls in flight from each peer city (limits.max_streams_per_peer).
    pub peer_streams: HashMap<String, Arc<Semaphore>>,
}

impl Proxy {
    /// Home ingress: a call from a system of this node's city.
    pub async fn from_caller(&self, req: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let (request_id, bad_id) = match request_id_of(&parts.headers) {
            Ok(id) => (id, None),
            Err((id, e)) => (id, Some(e)),
        };
        let mut ex = Exchange::new(
            self.auditor.clone(),
            &self.city,
            &request_id,
            Side::Local,
            &parts.headers,
        );
        if let Some(e) = bad_id.or_else(|| self.refusing()) {
            return self.reject(ex, e, Receipts::None).await;
        }
        let call = match Call::parse(&parts, &self.limits, request_id) {
            Ok(c) => c,
            Err(e) => return self.reject(ex, e, Receipts::None).await,
        };
        ex.record.service = call.service.clone();
        ex.record.method = call.method.clone();
        // What the caller asked for, even if routing refuses it.
        ex.record.target_city = call.target_city.clone().unwrap_or_default();
        ex.record.target_org = call.target_org.clone().unwrap_or_default();
        if let Err(e) = self.check_metadata(&parts.headers) {
            return self.reject(ex, e, Receipts::None).await;
        }
        // 1. Authenticate the caller: a JWT from this city's identity provider.
        let auth = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let caller = match self.trust.auth.authenticate(auth).await {
            Ok(c) => c,
            Err(e) => {
                let e = ProxyError::Unauthenticated(e.to_string());
                return self.reject(ex, e, Receipts::None).await;
            }
        };
        ex.record.caller_city = caller.city.clone();
        ex.record.caller_org = caller.org.clone();
        let intent = match self
            .trust
            .rate
            .check(&caller.id())
            .and_then(|()| Intent::parse(&parts.headers, &self.trust.pseudonyms, None))
        {
            Ok(i) => i,
            Err(e) => return self.reject(ex, e, Receipts::None).await,
        };
        intent.describe(&mut ex);
        // 2. Route through the federated catalog.
        let snapshot = self.catalog.snapshot();
        let route = match self.route(&snapshot, &call) {
            Ok(r) => r,
            Err(e) => return self.reject(ex, e, Receipts::None).await,
        };
        let target_city = match &route {
            Route::Local(svc) => {
                ex.record.target_org = svc.record.organisation.clone();
                self.city.clone()
            }
            Route::Peer(p) => {
                ex.record.side = Side::Home as i32;
                ex.record.peer_city = p.city.clone();
                ex.record.target_org = call.target_org.clone().unwrap_or_default();
                ex.record.consent_id = consent::presented_id(&parts.headers).unwrap_or_default();
                p.city.clone()
            }
        };
        ex.record.target_city = target_city.clone();
        // 3. Home policy: may this caller call that service in that city for this purpose?
        if let Err(e) = self.authorise(
            &caller.city,
            &caller.org,
            &caller.roles,
            &target_city,
            &call,
            &intent,
        ) {
            return self.reject(ex, e, Receipts::None).await;
        }
        strip(&mut parts.headers, HOP_BY_HOP);
        strip(&mut parts.headers, NODE_ONLY);
        strip(&mut parts.headers, NEVER_ACROSS);
        // 4. Forward: to a local provider, or over the mTLS channel to the peer node with a
        //    caller assertion signed by this node. The home side's record (with the peer's
        //    receipt) is durable before the final status reaches the caller.
        match route {
            Route::Local(svc) => {
                // This node is also the providing node: it checks the consent itself.
                match self.check_consent(&parts.headers, &svc, &caller.id(), &call, &intent) {
                    Ok(consent_id) => {
                        ex.record.consent_id = consent_id;
                        let org = svc.record.organisation.as_str();
                        pin_authorised(&mut parts.headers, &intent, &self.city, Some(org));
                        set(&mut parts.headers, ORIGIN_CITY, &self.city);
                        set(&mut parts.headers, CALLER, &caller.id());
                        let target = Target::Provider(&svc.endpoints);
                        self.forward(&call, parts, body, target, ex, Receipts::None)
                            .await
                    }
                    Err(e) => self.reject(ex, e, Receipts::None).await,
                }
            }
            Route::Peer(peer) => {
                let org = call.target_org.as_deref();
                pin_authorised(&mut parts.headers, &intent, &peer.city, org);
                let claims = AssertionClaims {
                    iss: self.city.clone(),
                    aud: peer.city.clone(),
                    sub: caller.org.clone(),
                    roles: caller.roles.clone(),
                    purpose: intent.purpose.clone(),
                    subj: intent.subject.clone(),
                    rid: call.request_id.clone(),
                    svc: call.service.clone(),
                    mth: call.method.clone(),
                    iat: assertion::now_s(),
                    exp: assertion::now_s() + assertion::TTL.as_secs(),
                    jti: uuid::Uuid::new_v4().to_string(),
                };
                let receipts = Receipts::Take(peer.city.clone(), peer.node_key());
                match self.trust.signer.sign(&claims) {
                    Ok(token) => {
                        set(&mut parts.headers, assertion::HEADER, &token);
                        self.forward(&call, parts, body, Target::Peer(&peer), ex, receipts)
                            .await
                    }
                    Err(e) => {
                        self.reject(ex, ProxyError::Internal(e.to_string()), Receipts::None)
                            .await
                    }
                }
            }
        }
    }

    /// Peer ingress: a call forwarded by the node of another city.
    pub async fn from_peer(&self, peer: PeerIdentity, req: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let (request_id, bad_id) = match request_id_of(&parts.headers) {
            Ok(id) => (id, None),
            Err((id, e)) => (id, Some(e)),
        };
        let mut ex = Exchange::new(
            self.auditor.clone(),
            &self.city,
            &request_id,
            Side::Provider,
            &parts.headers,
        );
        ex.record.peer_city = peer.city.clone();
        ex.record.caller_city = peer.city.clone();
        ex.record.target_city = self.city.clone();
        let give = Receipts::Give;
        if let Some(e) = bad_id.or_else(|| self.refusing()) {
            return self.reject(ex, e, give).await;
        }
        let mut call = match Call::parse(&parts, &self.limits, request_id) {
            Ok(c) => c,
            Err(e) => return self.reject(ex, e, give).await,
        };
        ex.record.service = call.service.clone();
        ex.record.method = call.method.clone();
        // 5. The peer node is authenticated by its mTLS certificate (`peer.city` comes from
        //    it, see trust::identify_peer); the caller by the assertion that node signed.
        let claims = match self.check_metadata(&parts.headers).and_then(|()| {
            let token = parts
                .headers
                .get(assertion::HEADER)
                .and_then(|v| v.to_str().ok());
            let expected = assertion::Expected {
                peer_city: &peer.city,
                own_city: &self.city,
                request_id: &call.request_id,
                service: &call.service,
                method: &call.method,
            };
            let claims = assertion::verify(token, &peer.public_key, &expected)
                .map_err(|e| ProxyError::Unauthenticated(e.to_string()))?;
            self.trust
                .replay
                .check_and_remember(&claims.jti, claims.exp)
                .map_err(|e| ProxyError::Unauthenticated(e.to_string()))?;
            Ok(claims)
        }) {
            Ok(c) => c,
            Err(e) => return self.reject(ex, e, give).await,
        };
        ex.record.caller_org = claims.sub.clone();
        let target = call.target_city.get_or_insert_with(|| self.city.clone());
        if *target != self.city {
            let e = ProxyError::NotRelayed {
                own: self.city.clone(),
                target: target.clone(),
            };
            return self.reject(ex, e, give).await;
        }
        let snapshot = self.catalog.snapshot();
        let svc = match self.local_provider(&snapshot, &call) {
            Ok(s) => s,
            Err(e) => return self.reject(ex, e, give).await,
        };
        ex.record.target_org = svc.record.organisation.clone();
        // 6. Provider policy (the providing city has the final say), on what the home node
        //    vouched for: caller organisation, roles and purpose from the assertion.
        let intent = match Intent::parse(
            &parts.headers,
            &self.trust.pseudonyms,
            Some(&claims.purpose),
        ) {
            Ok(i) => i,
            Err(e) => return self.reject(ex, e, give).await,
        };
        intent.describe(&mut ex);
        if let Err(e) = self.authorise(
            &peer.city,
            &claims.sub,
            &claims.roles,
            &self.city,
            &call,
            &intent,
        ) {
            return self.reject(ex, e, give).await;
        }
        let caller_id = format!("{}/{}", peer.city, claims.sub);
        match self.check_consent(&parts.headers, &svc, &caller_id, &call, &intent) {
            Ok(id) => ex.record.consent_id = id,
            Err(e) => return self.reject(ex, e, give).await,
        }
        let permit = match self.peer_slot(&peer.city) {
            Ok(p) => p,
            Err(e) => return self.reject(ex, e, give).await,
        };
        strip(&mut parts.headers, HOP_BY_HOP);
        strip(&mut parts.headers, NODE_ONLY);
        let org = svc.record.organisation.as_str();
        pin_authorised(&mut parts.headers, &intent, &self.city, Some(org));
        set(&mut parts.headers, ORIGIN_CITY, &peer.city);
        set(&mut parts.headers, CALLER, &caller_id);
        // 7. Forward to the provider registered in this city.
        // 8. The audit record is durable before the final status leaves, and a signed
        //    receipt travels back in the trailers.
        let target = Target::Provider(&svc.endpoints);
        self.forward(&call, parts, body, target, ex, give)
            .await
            .map(|b| grpc::boxed(HoldPermit { body: b, permit }))
    }

    /// Set once a peer holds a checkpoint that this node's audit log contradicts: the node
    /// serves nothing until an operator has looked.
    fn refusing(&self) -> Option<ProxyError> {
        self.auditor
            .contradicted()
            .map(|why| ProxyError::Unavailable(format!("{} refuses to serve: {why}", self.city)))
    }

    /// Steps 3 and 6: this node's policy on one call.
    fn authorise(
        &self,
        caller_city: &str,
        caller_org: &str,
        roles: &[String],
        target_city: &str,
        call: &Call,
        intent: &Intent,
    ) -> Result<(), ProxyError> {
        let req = PolicyRequest {
            caller_city,
            caller_org,
            roles,
            target_city,
            service: &call.service,
            method: &call.method,
            purpose: &intent.purpose,
            catalog_code: intent.catalog_code.as_deref(),
        };
        let decision = self.trust.policy.current().decide(&req);
        if decision.allowed {
            Ok(())
        } else {
            Err(ProxyError::PermissionDenied(format!(
                "{}: {}",
                self.city,
                decision.explain(&req)
            )))
        }
    }

    /// The providing node's consent check for personal-data services: signature (by the
    /// issuing city's node), subject, grantee, target city, service, purpose, expiry and
    /// revocation.
    fn check_consent(
        &self,
        h: &HeaderMap,
        svc: &LocalService,
        caller: &str,
        call: &Call,
        intent: &Intent,
    ) -> Result<String, ProxyError> {
        if !svc.record.personal_data {
            return Ok(String::new());
        }
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let scope = consent::ConsentScope {
            subject: text(subject::HEADER),
            caller,
            target_city: &self.city,
            service: &call.service,
            purpose: &intent.purpose,
        };
        let snap = self.catalog.snapshot();
        let key = |city: &str| {
            if city == self.city {
                Some(self.trust.own_key.clone())
            } else {
                self.peers.get(city).and_then(|p| p.node_key())
            }
        };
        consent::verify(text(consent::HEADER), &scope, key, |city, id| {
            snap.consent_revoked(city, id)
        })
        .map(|c| c.jti)
        .map_err(|e| match e {
            consent::ConsentError::NoSubject(_) => ProxyError::BadRequest(e.to_string()),
            _ => ProxyError::PermissionDenied(format!("{}: {e}", self.city)),
        })
    }

    /// One of the peer city's concurrency slots, or RESOURCE_EXHAUSTED.
    fn peer_slot(&self, city: &str) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
        let Some(sem) = self.peer_streams.get(city) else {
            return Ok(None);
        };
        sem.clone().try_acquire_owned().map(Some).map_err(|_| {
            ProxyError::ResourceExhausted(format!(
                "{}: peer city `{city}` already has {} calls in flight (limits.max_streams_per_peer)",
                self.city, self.limits.max_streams_per_peer
            ))
        })
    }

    fn check_metadata(&self, h: &HeaderMap) -> Result<(), ProxyError> {
        let size: u64 = h
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
            .sum();
        if size > self.limits.max_metadata_bytes {
            return Err(ProxyError::ResourceExhausted(format!(
                "metadata of {size} bytes exceeds the limit of {} bytes (limits.max_metadata_bytes)",
                self.limits.max_metadata_bytes
            )));
        }
        Ok(())
    }

    /// Refuses a call with `e`, after its audit record is durable.
    async fn reject(&self, ex: Exchange, e: ProxyError, receipts: Receipts) -> Response<Body> {
        let status = e.status();
        tracing::debug!(request_id = %ex.record.request_id, code = ?status.code(), error = %e, "call refused");
        exchange::refuse(self.auditor.clone(), ex, status, receipts).await
    }

    /// Step 2: which city, then which provider or peer.
    fn route(&self, snap: &Snapshot, call: &Call) -> Result<Route, ProxyError> {
        let city = match &call.target_city {
            Some(c) => c.clone(),
            None => {
                let cities = snap.cities_offering(&call.service);
                match cities.as_slice() {
                    [] => {
                        return Err(ProxyError::UnknownServiceAnywhere {
                            service: call.service.clone(),
                        })
                    }
                    [one] => one.to_string(),
                    many => {
                        return Err(ProxyError::AmbiguousCity {
                            service: call.service.clone(),
                            cities: many.join(", "),
                        })
                    }
                }
            }
        };
        if city == self.city {
            return self.local_provider(snap, call).map(Route::Local);
        }
        let Some(peer) = self.peers.get(&city) else {
            let mut known: Vec<&str> = vec![self.city.as_str()];
            known.extend(self.peers.keys().map(String::as_str));
            return Err(ProxyError::UnknownCity {
                city,
                known: known.join(", "),
            });
        };
        match snap.peers.get(&city) {
            // Never heard from the peer: it is down, not lacking the service.
            None => Err(ProxyError::Unavailable(format!(
                "peer city `{city}` is unreachable (no catalog received from it yet)"
            ))),
            Some(_) if !snap.peer_offers(&city, &call.service) => Err(ProxyError::UnknownService {
                service: call.service.clone(),
                city,
            }),
            // Lost (its keepalive went unanswered, or the link broke): fail now rather than
            // spend the caller's deadline; the peer's sync task reconnects in the background.
            Some(_) if !peer.is_up() && peer.endpoint.has_failed() => {
                Err(ProxyError::Unavailable(format!(
                    "peer city `{city}` is unreachable (its node stopped answering; reconnecting)"
                )))
            }
            Some(_) => Ok(Route::Peer(peer.clone())),
        }
    }

    fn local_provider(
        &self,
        snap: &Snapshot,
        call: &Call,
    ) -> Result<Arc<LocalService>, ProxyError> {
        let mut offers = snap.local_providers(&call.service).filter(|s| {
            call.target_org
                .as_ref()
                .is_none_or(|o| *o == s.record.organisation)
        });
        let first = offers.next().ok_or_else(|| ProxyError::UnknownService {
            service: match &call.target_org {
                Some(o) => format!("{} (organisation {o})", call.service),
                None => call.service.clone(),
            },
            city: self.city.clone(),
        })?;
        let rest: Vec<_> = offers.collect();
        if !rest.is_empty() {
            let mut orgs = vec![first.record.organisation.clone()];
            orgs.extend(rest.iter().map(|s| s.record.organisation.clone()));
            return Err(ProxyError::AmbiguousOrg {
                service: call.service.clone(),
                city: self.city.clone(),
                orgs: orgs.join(", "),
            });
        }
        Ok(first.clone())
    }

    /// Sends the call upstream once a connection is up, within the deadline, and wraps the
    /// response so that limits and the deadline hold while it streams back and the exchange
    /// is audited before its final status is released. Failures are audited refusals.
    async fn forward(
        &self,
        call: &Call,
        mut parts: Parts,
        body: Incoming,
        target: Target<'_>,
        ex: Exchange,
        receipts: Receipts,
    ) -> Response<Body> {
        let budget = self.limits.connect_timeout.min(call.remaining());
        let picked = match target {
            Target::Provider(set) => set.pick(budget).await,
            Target::Peer(peer) => peer
                .endpoint
                .ready_sender(budget)
                .await
                .map(|s| (peer.endpoint.clone(), s)),
        };
        let (endpoint, mut sender) = match picked {
            Ok(p) => p,
            Err(e) => {
                let e = match target {
                    Target::Peer(p) => ProxyError::Unavailable(format!(
                        "peer city `{}` is unreachable: {e}",
                        p.city
                    )),
                    Target::Provider(_) => ProxyError::Unavailable(format!(
                        "provider of `{}` is unreachable: {e}",
                        call.service
                    )),
                };
                return self.reject(ex, e, receipts).await;
            }
        };
        if call.remaining().is_zero() {
            let e = ProxyError::Deadline(format!(
                "deadline exceeded before reaching {}",
                endpoint.label()
            ));
            return self.reject(ex, e, receipts).await;
        }
        parts.uri = endpoint.uri_for(&call.path);
        set(
            &mut parts.headers,
            "grpc-timeout",
            &format_timeout(call.remaining()),
        );
        set(&mut parts.headers, REQUEST_ID, &call.request_id);
        let (guarded, mut violation) =
            RequestGuard::new(body, self.limits.max_message_bytes, ex.request.clone());
        let req = Request::from_parts(parts, grpc::boxed(guarded));
        let label = endpoint.label().to_string();
        let send = async {
            sender.ready().await?;
            sender.send_request(req).await
        };
        let sent = tokio::select! {
            r = tokio::time::timeout_at(call.deadline, send) => match r {
                Err(_) => Err(ProxyError::Deadline(format!("deadline exceeded waiting for {label}"))),
                Ok(Err(e)) => match violation.try_recv() {
                    Ok(status) => Err(ProxyError::Passthrough(status)),
                    Err(_) => Err(ProxyError::Unavailable(format!("{label} failed: {e}"))),
                },
                Ok(Ok(resp)) => Ok(resp),
            },
            Ok(status) = &mut violation => Err(ProxyError::Passthrough(status)),
        };
        let resp = match sent {
            Ok(r) if r.status() == http::StatusCode::OK => r,
            Ok(r) => {
                let code = code_for_http_status(r.status());
                let e = ProxyError::Passthrough(Status::new(
                    code,
                    format!("{label} answered http {}", r.status()),
                ));
                return self.reject(ex, e, receipts).await;
            }
            Err(e) => return self.reject(ex, e, receipts).await,
        };
        let (mut rparts, rbody) = resp.into_parts();
        set(&mut rparts.headers, REQUEST_ID, &call.request_id);
        tracing::debug!(
            request_id = %call.request_id,
            service = %call.service,
            method = %call.method,
            elapsed_us = call.started.elapsed().as_micros() as u64,
            "call forwarded"
        );
        if let Some((code, message)) = grpc::status_of(&rparts.headers) {
            // Trailers-only response: audit now, before the headers (the status) leave.
            let end = grpc::End {
                code,
                message,
                trailers: rparts.headers.clone(),
                response: grpc::Tally::default(),
            };
            return match exchange::complete(self.auditor.clone(), ex, end, receipts).await {
                Ok(extra) => {
                    rparts.headers.extend(extra);
                    Response::from_parts(rparts, Body::empty())
                }
                Err(status) => grpc::status_response(status, &call.request_id),
            };
        }
        let guarded = ResponseGuard::new(
            rbody,
            self.limits.max_message_bytes,
            call.deadline,
            label,
            call.request_id.clone(),
        )
        .on_end(exchange::on_end(self.auditor.clone(), ex, receipts));
        Response::from_parts(rparts, grpc::boxed(guarded))
    }
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Provider(&'a EndpointSet),
    Peer(&'a Peer),
}

/// Rewrites the metadata this node decided on to exactly the values it authorised, so that
/// the peer and the provider see what was checked, never the caller's own spelling of it
/// (`CASE-HANDLING` was authorised as `case-handling`; at the providing node the purpose is
/// the one the caller assertion vouches for).
fn pin_authorised(h: &mut HeaderMap, intent: &Intent, target_city: &str, target_org: Option<&str>) {
    set(h, PURPOSE, &intent.purpose);
    if let Some(code) = &intent.catalog_code {
        set(h, CATALOG_CODE, code);
    }
    // Validated (GB 11643) when parsed; the check character is upper case everywhere.
    let subject = h
        .get(subject::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_uppercase);
    if let Some(id) = subject {
        set(h, subject::HEADER, &id);
    }
    set(h, TARGET_CITY, target_city);
    if let Some(org) = target_org {
        set(h, TARGET_ORG, org);
    }
}

fn strip(h: &mut HeaderMap, names: &[&str]) {
    for n in names {
        h.remove(*n);
    }
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds a concurrency slot until it is dropped.
    struct HoldPermit {
        #[pin]
        body: Body,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl http_body::Body for HoldPermit {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
