//! The home node's steps (DESIGN §2, steps 1–4): a call from a system of this city is
//! authenticated, rate-limited, read for its intent, routed, authorised by the home policy,
//! and prepared for a local provider (consent checked here) or for the peer node (a caller
//! assertion signed by this node).

use http::request::Parts;
use http::HeaderMap;

use super::call::{Call, Intent};
use super::checks::Principal;
use super::headers;
use super::route::Upstream;
use super::{Proxy, ProxyError, Ready};
use crate::assertion::{self, AssertionClaims};
use crate::audit::exchange::Exchange;
use crate::auth::Caller;
use crate::consent;

impl Proxy {
    /// Everything the home node checks, in order; the first failure is the refusal.
    pub(super) async fn home_steps(
        &self,
        ex: &mut Exchange,
        mut parts: Parts,
    ) -> Result<Ready, ProxyError> {
        let call = self.accept(ex, &parts)?;
        ex.requested(call.target_city.as_deref(), call.target_org.as_deref());
        self.check_metadata(&parts.headers)?;
        let caller = ex
            .step(|| tracing::debug_span!("authenticate"))
            .in_scope(|| crate::auth::principal_in(&parts.extensions))?;
        ex.caller(&caller.city, &caller.org);
        ex.person(caller.kind.as_str(), &caller.person);
        self.trust.rate.check(&caller.id())?;
        let mut intent = Intent::parse(&parts.headers, &call, &self.trust.pseudonyms, None)?;
        intent.own = own_data(&caller, &intent)?;
        ex.intent(
            &intent.purpose,
            intent.catalog_code.as_deref(),
            intent.subject.as_deref(),
        );
        let upstream = tracing::debug_span!("route")
            .in_scope(|| self.route(&self.catalog.snapshot(), &call))?;
        if self.personal(&upstream, &call) {
            caller.require_person()?;
        }
        let target_city = match &upstream {
            Upstream::Provider(svc) => {
                ex.routed_local(&self.city, &svc.record.organisation);
                self.city.clone()
            }
            Upstream::Peer(p) => {
                let consent = consent::presented_id(&parts.headers);
                ex.routed_to_peer(&p.city, p.node_key(), call.target_org.as_deref(), consent);
                p.city.clone()
            }
        };
        let consent = ex.step(|| tracing::debug_span!("policy")).in_scope(|| {
            self.authorise(&Principal::of(&caller), &target_city, &call, &intent)?;
            headers::strip_from_caller(&mut parts.headers);
            self.hand_over(&mut parts.headers, &upstream, &caller, &call, &intent)
        })?;
        ex.consent(consent);
        Ok(Ready {
            call,
            parts,
            upstream,
            permit: None,
        })
    }

    /// Step 4, the metadata the upstream gets: for a local provider, this node is also the
    /// providing node and checks the consent itself (its id is returned); for the peer, the
    /// authorised metadata and a caller assertion signed by this node.
    fn hand_over(
        &self,
        h: &mut HeaderMap,
        upstream: &Upstream,
        caller: &Caller,
        call: &Call,
        intent: &Intent,
    ) -> Result<String, ProxyError> {
        match upstream {
            Upstream::Provider(svc) => {
                let consent = self.check_consent(h, svc, &caller.id(), call, intent)?;
                let org = &svc.record.organisation;
                headers::to_provider(h, intent, &self.city, org, &caller.vouched());
                Ok(consent)
            }
            Upstream::Peer(peer) => {
                let org = call.target_org.as_deref();
                headers::pin_authorised(h, intent, &peer.city, org);
                let token = self.sign_assertion(caller, &peer.city, call, intent)?;
                headers::set(h, assertion::HEADER, &token);
                // The providing node checks the consent; the id was recorded when routed
                // (a citizen about themselves shows none: their own data).
                if intent.own {
                    return Ok(consent::OWN_DATA.to_string());
                }
                Ok(consent::presented_id(h).unwrap_or_default())
            }
        }
    }

    /// Step 4: what this node vouches for across the boundary, bound to this request.
    fn sign_assertion(
        &self,
        caller: &Caller,
        peer_city: &str,
        call: &Call,
        intent: &Intent,
    ) -> Result<String, ProxyError> {
        let claims = AssertionClaims {
            iss: self.city.clone(),
            aud: peer_city.to_string(),
            sub: caller.org.clone(),
            roles: caller.roles.clone(),
            purpose: intent.purpose.clone(),
            subj: intent.subject.clone(),
            own: intent.own,
            knd: caller.kind.as_str().to_string(),
            prs: caller.person.clone(),
            rid: call.request_id.clone(),
            svc: call.service.clone(),
            mth: call.method.clone(),
            iat: assertion::now_s(),
            exp: assertion::now_s() + assertion::TTL.as_secs(),
            jti: tongban_telemetry::trace::unique_id(),
        };
        self.trust
            .signer
            .sign(&claims)
            .map_err(|e| ProxyError::Internal(e.to_string()))
    }
}

/// Whether the call is a citizen's own: a citizen token about the citizen themselves (their
/// own data needs no consent). A citizen token about anyone else is refused: a citizen acts
/// only for themselves.
fn own_data(caller: &Caller, intent: &Intent) -> Result<bool, ProxyError> {
    if caller.kind != crate::auth::PersonKind::Citizen {
        return Ok(false);
    }
    match intent.subject.as_deref() {
        None => Ok(false),
        Some(subject) if caller.is_citizen(subject) => Ok(true),
        Some(_) => Err(ProxyError::NotOwnSubject),
    }
}
