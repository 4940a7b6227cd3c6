//! The providing node's steps (DESIGN §2, steps 5–7): a call forwarded by another city's
//! node. The peer is who its mTLS certificate says; the caller is what that node's signed
//! assertion vouches for. This node's policy has the final say, it checks the citizen's
//! consent, caps the peer's calls in flight, and tells its provider where the call came from.

use std::sync::Arc;

use http::request::Parts;
use tokio::sync::OwnedSemaphorePermit;

use super::call::{Call, Intent};
use super::checks::Principal;
use super::headers;
use super::route::Upstream;
use super::{Proxy, ProxyError, Ready};
use crate::assertion::{self, AssertionClaims};
use crate::audit::exchange::Exchange;
use crate::trust::PeerIdentity;
use tongban_proto::metadata::{PersonKind, VouchedPrincipal};

impl Proxy {
    /// Everything the providing node checks, in order; the first failure is the refusal.
    pub(super) async fn provider_steps(
        &self,
        ex: &mut Exchange,
        peer: &PeerIdentity,
        mut parts: Parts,
    ) -> Result<Ready, ProxyError> {
        let mut call = self.accept(ex, &parts)?;
        self.check_metadata(&parts.headers)?;
        let claims = ex
            .step(|| tracing::debug_span!("authenticate", tongban.peer = %peer.city))
            .in_scope(|| self.verify_assertion(&parts, peer, &call))?;
        ex.caller(&peer.city, &claims.sub);
        let principal = vouched_principal(&peer.city, &claims);
        ex.person(principal.kind.as_str(), &principal.person);
        let target = call.target_city.get_or_insert_with(|| self.city.clone());
        if *target != self.city {
            return Err(ProxyError::NotRelayed {
                own: self.city.clone(),
                target: target.clone(),
            });
        }
        let svc = ex
            .step(|| tracing::debug_span!("route"))
            .in_scope(|| self.local_provider(&self.catalog.snapshot(), &call))?;
        let org = svc.record.organisation.clone();
        ex.routed_local(&self.city, &org);
        // The purpose is the one the home node vouched for, not the metadata's.
        let mut intent = Intent::parse(
            &parts.headers,
            &call,
            &self.trust.pseudonyms,
            Some(&claims.purpose),
        )?;
        intent.own = claims.own && principal.is_citizen();
        ex.intent(
            &intent.purpose,
            intent.catalog_code.as_deref(),
            intent.subject.as_deref(),
        );
        let caller_id = principal.caller();
        if principal.person.is_empty() && self.personal_data(&call, || svc.record.personal_data) {
            return Err(ProxyError::Unauthenticated(format!(
                "{}: the caller assertion names no person, and the call is about a person's data",
                self.city
            )));
        }
        let consent = ex.step(|| tracing::debug_span!("policy")).in_scope(|| {
            let who = Principal::vouched(&peer.city, &claims);
            self.authorise(&who, &self.city, &call, &intent)?;
            self.check_consent(&parts.headers, &svc, &caller_id, &call, &intent)
        })?;
        ex.consent(consent);
        let permit = self.peer_slot(&peer.city)?;
        headers::strip_from_peer(&mut parts.headers);
        let h = &mut parts.headers;
        headers::to_provider(h, &intent, &self.city, &org, &principal);
        Ok(Ready {
            call,
            parts,
            upstream: Upstream::Provider(svc),
            permit,
        })
    }

    /// Step 5: the assertion the peer's node signed, with the key of the certificate that
    /// carried the call, bound to this request; never seen before.
    fn verify_assertion(
        &self,
        parts: &Parts,
        peer: &PeerIdentity,
        call: &Call,
    ) -> Result<AssertionClaims, ProxyError> {
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
    }

    /// One of the peer city's concurrency slots, or RESOURCE_EXHAUSTED.
    fn peer_slot(&self, city: &str) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
        let Some(sem) = self.peer_streams.get(city) else {
            return Ok(None);
        };
        Arc::clone(sem).try_acquire_owned().map(Some).map_err(|_| {
            ProxyError::ResourceExhausted(format!(
                "{}: peer city `{city}` already has {} calls in flight (limits.max_streams_per_peer)",
                self.city, self.limits.max_streams_per_peer
            ))
        })
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
