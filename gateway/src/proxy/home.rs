//! The home node's steps (DESIGN §2, steps 1–4): a call from a system or a citizen of this
//! city is taken with the principal the listener made of its token, rate-limited, read for
//! its intent, routed, authorised by the home policy (and, for a local provider, checked
//! for consent), then handed over: to a local provider with what the node vouches for, or
//! to the peer node with a caller assertion signed by this node.

use super::headers;
use super::stage::{Accepted, Authenticated, Authorised, Upstream, Who};
use super::{Proxy, ProxyError, Ready};
use crate::assertion::{self, AssertionClaims};
use crate::audit::exchange::Exchange;
use crate::auth::Caller;
use crate::ratelimit::RateLimiter;

impl Proxy {
    /// Everything the home node checks, in order; the first failure is the refusal. Each
    /// stage's value is recorded in the exchange as soon as it is known, so a refusal's
    /// audit record says as much as the node had learnt.
    pub(super) async fn home_steps(
        &self,
        ex: &mut Exchange,
        parts: http::request::Parts,
    ) -> Result<Ready, ProxyError> {
        let accepted = self.accept(ex, parts)?;
        let call = &accepted.call;
        ex.requested(call.target_city.as_deref(), call.target_org.as_deref());
        let authenticated = ex
            .step(|| tracing::debug_span!("authenticate"))
            .in_scope(|| Authenticate.run(accepted))?;
        let who = &authenticated.who.principal;
        ex.caller(&who.city, &who.org);
        ex.person(who.kind.as_str(), &who.person);
        let authenticated = Throttle {
            rate: &self.trust.rate,
        }
        .run(authenticated)?;
        let intended = self.intend(None).run(authenticated)?;
        let i = &intended.intent;
        ex.intent(&i.purpose, i.catalog_code.as_deref(), i.subject.as_deref());
        let snapshot = self.catalog.snapshot();
        let routed = ex
            .step(|| tracing::debug_span!("route"))
            .in_scope(|| self.route(&snapshot).run(intended))?;
        match &routed.upstream {
            Upstream::Provider(svc) => ex.routed_local(&self.city, &svc.record.organisation),
            Upstream::Peer(p) => {
                let consent = routed.presented_consent.clone();
                let org = routed.call.target_org.as_deref();
                ex.routed_to_peer(&p.city, p.node_key(), org, consent);
            }
        }
        let authorised = ex
            .step(|| tracing::debug_span!("policy"))
            .in_scope(|| self.authorise(&snapshot, routed))?;
        ex.consent(authorised.consent.clone());
        Vouch { city: &self.city }.run(authorised)
    }
}

/// The authentication stage: `Accepted → Authenticated`, with the principal the listener's
/// authentication layer made of the caller's token (in the request's extensions); no token
/// is parsed here.
pub(super) struct Authenticate;

impl Authenticate {
    pub fn run(&self, a: Accepted) -> Result<Authenticated, ProxyError> {
        let mut parts = a.parts;
        let caller = crate::auth::take_principal(&mut parts.extensions)?;
        Ok(Authenticated {
            call: a.call,
            parts,
            who: who_of(caller),
        })
    }
}

/// The principal of an authenticated caller, as the later stages see it.
fn who_of(caller: Caller) -> Who {
    Who {
        principal: caller.vouched(),
        roles: caller.roles,
    }
}

/// The caller's rate limit (per `city/org`): `Authenticated → Authenticated`.
pub(super) struct Throttle<'a> {
    pub rate: &'a RateLimiter,
}

impl Throttle<'_> {
    pub fn run(&self, a: Authenticated) -> Result<Authenticated, ProxyError> {
        self.rate.check(&a.who.caller_id())?;
        Ok(a)
    }
}

/// The hand-over stage: `Authorised → Ready`. Caller credentials and node-only metadata
/// go; for a local provider, the authorised metadata and the principal; for the peer, the
/// authorised metadata and the claims of a caller assertion bound to this request (signed
/// by [`seal`] once the connection it goes on is known).
pub(super) struct Vouch<'a> {
    /// This node's city.
    pub city: &'a str,
}

/// Signs `claims` for the connection with channel binding `binding` into the caller
/// assertion header; the digest of the claims as sent.
pub(super) fn seal(
    signer: &assertion::Signer,
    claims: &mut AssertionClaims,
    binding: Option<&assertion::ChannelBinding>,
    h: &mut http::HeaderMap,
) -> Result<[u8; 32], String> {
    let binding = binding.ok_or("the connection to the peer has no tls channel binding")?;
    claims.chb = binding.as_str().to_string();
    let (token, digest) = signer.seal(claims, binding).map_err(|e| e.to_string())?;
    headers::set_unique(h, assertion::HEADER, &token);
    Ok(digest)
}

impl Vouch<'_> {
    pub fn run(&self, a: Authorised) -> Result<Ready, ProxyError> {
        let Authorised {
            call,
            mut parts,
            who,
            intent,
            upstream,
            consent: _,
        } = a;
        let h = &mut parts.headers;
        headers::strip_from_caller(h);
        let assertion = match &upstream {
            Upstream::Provider(svc) => {
                let org = &svc.record.organisation;
                headers::to_provider(h, &intent, self.city, org, &who.principal);
                None
            }
            Upstream::Peer(peer) => {
                headers::pin_authorised(h, &intent, &peer.city, call.target_org.as_deref());
                let now = assertion::now_s();
                let claims = AssertionClaims {
                    iss: self.city.to_string(),
                    aud: peer.city.clone(),
                    sub: who.principal.org.clone(),
                    roles: who.roles.clone(),
                    purpose: intent.purpose.clone(),
                    subj: intent.subject.clone(),
                    own: intent.own,
                    knd: who.principal.kind.as_str().to_string(),
                    prs: who.principal.person.clone(),
                    rid: call.request_id.clone(),
                    svc: call.service.clone(),
                    mth: call.method.clone(),
                    iat: now,
                    exp: now + assertion::TTL.as_secs(),
                    jti: tongban_telemetry::trace::unique_id(),
                    chb: String::new(),
                };
                Some(Box::new(claims))
            }
        };
        Ok(Ready {
            call,
            parts,
            upstream,
            permit: None,
            assertion,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tongban_proto::metadata::{PersonKind, VouchedPrincipal, PRINCIPAL};

    use super::*;
    use crate::auth::{AuthError, Authenticated as Token};
    use crate::proxy::call::Intent;
    use crate::proxy::stage::testing::{accepted, provider, who};

    fn caller(kind: PersonKind, person: &str) -> Caller {
        Caller {
            city: "jinan".into(),
            org: "hrss".into(),
            roles: vec!["r".into()],
            kind,
            person: person.into(),
            token_id: "t-1".into(),
            exp: 0,
        }
    }

    #[test]
    fn authenticate_takes_the_principal_the_listener_made_and_never_a_token() {
        let mut a = accepted(&[("authorization", "Bearer not-looked-at")]);
        a.parts
            .extensions
            .insert(Token(Ok(caller(PersonKind::Official, "zhang.wei"))));
        let got = Authenticate.run(a).unwrap();
        assert_eq!(
            got.who.principal,
            VouchedPrincipal {
                kind: PersonKind::Official,
                city: "jinan".into(),
                org: "hrss".into(),
                person: "zhang.wei".into(),
            }
        );
        assert_eq!(got.who.roles, vec!["r".to_string()]);
        // The listener's refusal is the refusal; no principal at all is a missing token.
        let mut a = accepted(&[]);
        a.parts
            .extensions
            .insert(Token(Err(AuthError::Invalid("expired".into()))));
        assert!(matches!(
            Authenticate.run(a),
            Err(ProxyError::Auth(AuthError::Invalid(_)))
        ));
        assert!(matches!(
            Authenticate.run(accepted(&[])),
            Err(ProxyError::Auth(AuthError::Missing))
        ));
    }

    #[test]
    fn throttle_refuses_the_call_past_the_callers_burst() {
        let rate = RateLimiter::new(1, 1);
        let t = Throttle { rate: &rate };
        let a = |org: &str| Authenticated {
            call: accepted(&[]).call,
            parts: accepted(&[]).parts,
            who: who(PersonKind::Official, "jinan", org, "x"),
        };
        assert!(t.run(a("hrss")).is_ok());
        assert!(matches!(t.run(a("hrss")), Err(ProxyError::RateLimited(_))));
        // Another organisation has its own bucket.
        assert!(t.run(a("gjj")).is_ok());
    }

    #[test]
    fn vouch_hands_a_local_provider_the_principal_and_drops_credentials() {
        let a = accepted(&[
            ("authorization", "Bearer secret"),
            ("cookie", "c=1"),
            (
                PRINCIPAL,
                "kind=official;city=qingdao;org=gaj;person=forged",
            ),
            ("x-tongban-purpose", "case-handling"),
        ]);
        let authorised = Authorised {
            call: a.call,
            parts: a.parts,
            who: who(PersonKind::Citizen, "jinan", "portal", "pseudonym-a"),
            intent: Intent {
                purpose: "case-handling".into(),
                catalog_code: Some("JQ-03".into()),
                subject: None,
                own: false,
            },
            upstream: Upstream::Provider(provider("hrss", &["JQ-03"], true)),
            consent: String::new(),
        };
        let ready = Vouch { city: "jinan" }.run(authorised).unwrap();
        let h = &ready.parts.headers;
        assert!(h.get("authorization").is_none());
        assert!(h.get("cookie").is_none());
        assert!(h.get(assertion::HEADER).is_none());
        let p = VouchedPrincipal::parse(h.get(PRINCIPAL).unwrap().to_str().unwrap()).unwrap();
        assert_eq!(p.kind, PersonKind::Citizen);
        assert_eq!(
            (p.caller(), p.person.as_str()),
            ("jinan/portal".into(), "pseudonym-a")
        );
        assert_eq!(h.get("x-tongban-caller").unwrap(), "jinan/portal");
        assert_eq!(h.get("x-tongban-catalog-code").unwrap(), "JQ-03");
    }
}
