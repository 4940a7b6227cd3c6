//! The providing node's steps (DESIGN §2, steps 5–7): a call forwarded by another city's
//! node. The peer is who its mTLS certificate says; the caller is what that node's signed
//! assertion vouches for. This node's policy has the final say, it checks the citizen's
//! consent, caps the peer's calls in flight, and tells its provider where the call came from
//! and who is behind it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tongban_proto::metadata::{PersonKind, VouchedPrincipal};

use super::checks::VouchedIntent;
use super::headers;
use super::stage::{Accepted, Authenticated, Authorised, Who};
use super::{Proxy, ProxyError, Ready};
use crate::assertion::{self, AssertionClaims, ReplayCache};
use crate::audit::exchange::Exchange;
use crate::trust::PeerIdentity;

impl Proxy {
    /// Everything the providing node checks, in order; the first failure is the refusal.
    pub(super) async fn provider_steps(
        &self,
        ex: &mut Exchange,
        peer: &PeerIdentity,
        parts: http::request::Parts,
    ) -> Result<Ready, ProxyError> {
        let accepted = self.accept(ex, parts)?;
        let (authenticated, claims) = ex
            .step(|| tracing::debug_span!("authenticate", tongban.peer = %peer.city))
            .in_scope(|| {
                VerifyAssertion {
                    city: &self.city,
                    peer,
                    replay: &self.trust.replay,
                }
                .run(accepted)
            })?;
        let who = &authenticated.who.principal;
        ex.caller(&who.city, &who.org);
        ex.person(who.kind.as_str(), &who.person);
        // The purpose is the one the home node vouched for, not the metadata's.
        let intended = self
            .intend(Some(VouchedIntent {
                purpose: &claims.purpose,
                own: claims.own,
            }))
            .run(authenticated)?;
        let i = &intended.intent;
        ex.intent(&i.purpose, i.catalog_code.as_deref(), i.subject.as_deref());
        let snapshot = self.catalog.snapshot();
        let routed = ex
            .step(|| tracing::debug_span!("route"))
            .in_scope(|| self.route(&snapshot).local(intended))?;
        if let super::stage::Upstream::Provider(svc) = &routed.upstream {
            ex.routed_local(&self.city, &svc.record.organisation);
        }
        let authorised = ex
            .step(|| tracing::debug_span!("policy"))
            .in_scope(|| self.authorise(&snapshot, routed))?;
        ex.consent(authorised.consent.clone());
        Admit {
            city: &self.city,
            peer_city: &peer.city,
            streams: self.peer_streams.get(&peer.city),
            max_streams: self.limits.max_streams_per_peer,
        }
        .run(authorised)
    }
}

/// The authentication stage of the providing node: `Accepted → Authenticated`. The caller
/// assertion the peer's node signed, verified with the key of the certificate that carried
/// the call, bound to this request and never seen before; the principal it vouches for.
pub(super) struct VerifyAssertion<'a> {
    /// This node's city.
    pub city: &'a str,
    pub peer: &'a PeerIdentity,
    pub replay: &'a ReplayCache,
}

impl VerifyAssertion<'_> {
    pub fn run(&self, a: Accepted) -> Result<(Authenticated, AssertionClaims), ProxyError> {
        let token = a
            .parts
            .headers
            .get(assertion::HEADER)
            .and_then(|v| v.to_str().ok());
        let expected = assertion::Expected {
            peer_city: &self.peer.city,
            own_city: self.city,
            request_id: &a.call.request_id,
            service: &a.call.service,
            method: &a.call.method,
        };
        let claims = assertion::verify(token, &self.peer.public_key, &expected)
            .map_err(|e| ProxyError::Unauthenticated(e.to_string()))?;
        self.replay
            .check_and_remember(&claims.jti, claims.exp)
            .map_err(|e| ProxyError::Unauthenticated(e.to_string()))?;
        let who = Who {
            principal: vouched_principal(&self.peer.city, &claims),
            roles: claims.roles.clone(),
        };
        Ok((
            Authenticated {
                call: a.call,
                parts: a.parts,
                who,
            },
            claims,
        ))
    }
}

/// The principal the peer's node vouched for: its city (from the certificate), the
/// organisation, and the person (an assertion without a kind, from an older node, is a
/// citizen's when it carries the `citizen` role).
fn vouched_principal(peer_city: &str, claims: &AssertionClaims) -> VouchedPrincipal {
    let kind = PersonKind::parse(&claims.knd).unwrap_or_else(|| {
        if claims.roles.iter().any(|r| r == crate::auth::CITIZEN_ROLE) {
            PersonKind::Citizen
        } else {
            PersonKind::Official
        }
    });
    VouchedPrincipal {
        kind,
        city: peer_city.to_string(),
        org: claims.sub.clone(),
        person: claims.prs.clone(),
    }
}

/// The admission stage: `Authorised → Ready`. One of the peer city's slots for calls in
/// flight (`limits.max_streams_per_peer`), and the metadata this node gives its provider.
pub(super) struct Admit<'a> {
    pub city: &'a str,
    pub peer_city: &'a str,
    pub streams: Option<&'a Arc<Semaphore>>,
    pub max_streams: u64,
}

impl Admit<'_> {
    pub fn run(&self, a: Authorised) -> Result<Ready, ProxyError> {
        let permit = self.slot()?;
        let Authorised {
            call,
            mut parts,
            who,
            intent,
            upstream,
            consent: _,
        } = a;
        let org = match &upstream {
            super::stage::Upstream::Provider(svc) => svc.record.organisation.clone(),
            super::stage::Upstream::Peer(_) => {
                return Err(ProxyError::Internal(
                    "a providing node routes only to its own providers".into(),
                ))
            }
        };
        let h = &mut parts.headers;
        headers::strip_from_peer(h);
        headers::to_provider(h, &intent, self.city, &org, &who.principal);
        Ok(Ready {
            call,
            parts,
            upstream,
            permit,
        })
    }

    fn slot(&self) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
        let Some(sem) = self.streams else {
            return Ok(None);
        };
        Arc::clone(sem).try_acquire_owned().map(Some).map_err(|_| {
            ProxyError::ResourceExhausted(format!(
                "{}: peer city `{}` already has {} calls in flight (limits.max_streams_per_peer)",
                self.city, self.peer_city, self.max_streams
            ))
        })
    }
}
