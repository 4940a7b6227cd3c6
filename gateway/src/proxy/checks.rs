//! The checks both sides make: the call is acceptable at all (request id, node state, path,
//! metadata size), this node's policy allows it, and the citizen consented.

use http::request::Parts;
use http::HeaderMap;

use super::call::{Call, Intent};
use super::{Proxy, ProxyError};
use crate::assertion::AssertionClaims;
use crate::audit::exchange::Exchange;
use crate::auth::Caller;
use crate::catalog::LocalService;
use crate::consent;
use crate::policy::PolicyRequest;
use crate::subject;

/// Who a policy decision is about: the authenticated caller (home) or what the peer's node
/// vouched for (provider).
pub(super) struct Principal<'a> {
    pub city: &'a str,
    pub org: &'a str,
    pub roles: &'a [String],
}

impl<'a> Principal<'a> {
    pub fn of(c: &'a Caller) -> Self {
        Principal {
            city: &c.city,
            org: &c.org,
            roles: &c.roles,
        }
    }

    pub fn vouched(peer_city: &'a str, claims: &'a AssertionClaims) -> Self {
        Principal {
            city: peer_city,
            org: &claims.sub,
            roles: &claims.roles,
        }
    }
}

impl Proxy {
    /// The call as such: this node serving, and the call readable.
    pub(super) fn accept(&self, ex: &mut Exchange, parts: &Parts) -> Result<Call, ProxyError> {
        if let Some(why) = self.auditor.contradicted() {
            // A peer holds a checkpoint this node's audit log contradicts: serve nothing
            // until an operator has looked.
            return Err(ProxyError::Unavailable(format!(
                "{} refuses to serve: {why}",
                self.city
            )));
        }
        let call = Call::parse(parts, &self.limits, ex.request_id().to_string())?;
        ex.call(&call.service, &call.method);
        Ok(call)
    }

    /// All metadata of the call within `limits.max_metadata_bytes`.
    pub(super) fn check_metadata(&self, h: &HeaderMap) -> Result<(), ProxyError> {
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

    /// Steps 3 and 6: this node's policy on one call.
    pub(super) fn authorise(
        &self,
        who: &Principal<'_>,
        target_city: &str,
        call: &Call,
        intent: &Intent,
    ) -> Result<(), ProxyError> {
        let req = PolicyRequest {
            caller_city: who.city,
            caller_org: who.org,
            roles: who.roles,
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

    /// Whether a call touches personal data: a call naming a catalog item exactly when the
    /// federation catalog says the item does; any other call when the registration of the
    /// service says so (`registered`).
    pub(super) fn personal_data(&self, call: &Call, registered: impl FnOnce() -> bool) -> bool {
        match call
            .catalog_code
            .as_deref()
            .and_then(|c| self.items.personal_data(c))
        {
            Some(personal) => personal,
            None => registered(),
        }
    }

    /// [`Self::personal_data`] for the upstream a call was routed to.
    pub(super) fn personal(&self, upstream: &super::route::Upstream, call: &Call) -> bool {
        self.personal_data(call, || match upstream {
            super::route::Upstream::Provider(svc) => svc.record.personal_data,
            super::route::Upstream::Peer(p) => self
                .catalog
                .snapshot()
                .peer_personal(&p.city, &call.service),
        })
    }

    /// The providing node's consent check for personal-data services: signature (by the
    /// issuing city's node), subject, grantee, target city, service, purpose, expiry and
    /// revocation. Returns the consent id (empty when none is needed).
    pub(super) fn check_consent(
        &self,
        h: &HeaderMap,
        svc: &LocalService,
        caller: &str,
        call: &Call,
        intent: &Intent,
    ) -> Result<String, ProxyError> {
        if !self.personal_data(call, || svc.record.personal_data) {
            return Ok(String::new());
        }
        if intent.own {
            // The citizen, signed in, about themselves: recorded as such in the audit.
            return Ok(consent::OWN_DATA.to_string());
        }
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let scope = consent::ConsentScope {
            subject: text(subject::HEADER),
            caller,
            target_city: &self.city,
            service: &call.service,
            catalog_code: call.catalog_code.as_deref(),
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
        consent::verify(
            text(consent::HEADER),
            &scope,
            key,
            |city, id| snap.consent_revoked(city, id),
            &self.trust.consents,
        )
        .map(|c| c.jti)
        .map_err(|source| ProxyError::Consent {
            city: self.city.clone(),
            source,
        })
    }
}
