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
        let (authenticated, claims, digest) = ex
            .step(|| tracing::debug_span!("authenticate", tongban.peer = %peer.city))
            .in_scope(|| {
                VerifyAssertion {
                    city: &self.city,
                    peer,
                    replay: &self.trust.replay,
                }
                .run(accepted)
            })?;
        ex.assertion(digest);
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
    /// The caller authenticated, the claims vouched for, and their digest.
    pub fn run(
        &self,
        a: Accepted,
    ) -> Result<(Authenticated, AssertionClaims, [u8; 32]), ProxyError> {
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
        let (claims, digest) = assertion::verify_digested(
            token,
            &self.peer.public_key,
            self.peer.binding.as_ref(),
            &expected,
        )
        .and_then(|(c, d)| {
            assertion::check_binding(&c, self.peer.binding.as_ref()).map(|()| (c, d))
        })
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
            digest,
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
            assertion: None,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tongban_proto::metadata::PRINCIPAL;

    use super::*;
    use crate::assertion::Form;
    use crate::federation::Peer;
    use crate::proxy::call::Intent;
    use crate::proxy::home::{seal, Vouch};
    use crate::proxy::stage::testing::{accepted, provider, who};
    use crate::proxy::stage::Upstream;
    use crate::upstream::Endpoint;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn intent(own: bool) -> Intent {
        Intent {
            purpose: "case-handling".into(),
            catalog_code: Some("JQ-03".into()),
            subject: Some("pseudonym-at-home".into()),
            own,
        }
    }

    /// What Jinan's `Vouch` stage sends Qingdao for `who`: the call's metadata, assertion
    /// included.
    fn vouched_by_jinan(der: &[u8], form: Form, who: Who, own: bool) -> http::HeaderMap {
        vouched_on(
            der,
            form,
            who,
            own,
            &assertion::ChannelBinding::for_tests("connection-1"),
        )
    }

    /// The same, for the connection whose channel binding is `binding`.
    fn vouched_on(
        der: &[u8],
        form: Form,
        who: Who,
        own: bool,
        binding: &assertion::ChannelBinding,
    ) -> http::HeaderMap {
        let signer = assertion::Signer::with_form(der, form);
        let ep = Arc::new(Endpoint::provider("http://127.0.0.1:9").unwrap());
        let peer = Arc::new(Peer::new("qingdao".into(), ep.clone(), ep));
        let a = accepted(&[("x-tongban-purpose", "case-handling")]);
        let mut ready = Vouch { city: "jinan" }
            .run(Authorised {
                call: a.call,
                parts: a.parts,
                who,
                intent: intent(own),
                upstream: Upstream::Peer(peer),
                consent: String::new(),
            })
            .unwrap();
        assert!(ready.parts.headers.get(assertion::HEADER).is_none());
        let mut claims = ready.assertion.take().unwrap();
        seal(
            &signer,
            &mut claims,
            Some(binding),
            &mut ready.parts.headers,
        )
        .unwrap();
        ready.parts.headers
    }

    fn at_qingdao(h: &http::HeaderMap) -> Accepted {
        let pairs: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        accepted(&refs)
    }

    #[test]
    fn the_assertion_vouch_signs_carries_the_person_once_to_the_providing_node() {
        the_assertion_carries_the_person_once(Form::Jwt);
    }

    #[test]
    fn the_mac_form_of_the_assertion_carries_the_person_once_on_its_connection_only() {
        the_assertion_carries_the_person_once(Form::Mac);
    }

    fn the_assertion_carries_the_person_once(form: Form) {
        let (_, public, der) = crate::trust::test_node_key();
        let dir = tempfile::tempdir().unwrap();
        drop(dir);
        let replay = ReplayCache::new();
        let jinan = PeerIdentity {
            city: "jinan".into(),
            public_key: public,
            binding: Some(assertion::ChannelBinding::for_tests("connection-1")),
        };
        let verify = VerifyAssertion {
            city: "qingdao",
            peer: &jinan,
            replay: &replay,
        };
        let official = who(PersonKind::Official, "jinan", "hrss", "zhang.wei");
        let h = vouched_by_jinan(&der, form, official.clone(), false);
        let sent = h.get(assertion::HEADER).unwrap();
        assert!(
            sent.is_sensitive(),
            "new on every call: never indexed by HPACK"
        );
        let sent = sent.to_str().unwrap();
        assert_eq!(sent.starts_with(assertion::MAC_PREFIX), form == Form::Mac);
        assert!(
            h.get(PRINCIPAL).is_none(),
            "the provider's metadata is set at qingdao"
        );
        let (got, claims, _) = verify.run(at_qingdao(&h)).unwrap();
        assert_eq!(got.who, official);
        assert_eq!(claims.purpose, "case-handling");
        // The same assertion again: a replay.
        let e = verify.run(at_qingdao(&h)).unwrap_err();
        assert!(e.to_string().contains("replay"), "{e}");
        // An assertion made for another connection (one to another replica of the city, or
        // before a restart): refused, whatever the replay cache holds.
        let elsewhere = vouched_on(
            &der,
            form,
            official.clone(),
            false,
            &assertion::ChannelBinding::for_tests("connection-2"),
        );
        let e = verify.run(at_qingdao(&elsewhere)).unwrap_err();
        assert!(e.to_string().contains("another tls connection"), "{e}");
        // The same claims, on a connection without a binding (not TLS): refused.
        let unbound = PeerIdentity {
            binding: None,
            ..jinan.clone()
        };
        let e = VerifyAssertion {
            city: "qingdao",
            peer: &unbound,
            replay: &ReplayCache::new(),
        }
        .run(at_qingdao(&vouched_by_jinan(
            &der,
            form,
            official.clone(),
            false,
        )))
        .unwrap_err();
        assert!(e.to_string().contains("another tls connection"), "{e}");
        match form {
            // Signed by another key than the certificate's: refused.
            Form::Jwt => {
                let (_, _, other) = crate::trust::test_node_key();
                let forged = vouched_by_jinan(&other, form, official, false);
                assert!(matches!(
                    verify.run(at_qingdao(&forged)),
                    Err(ProxyError::Unauthenticated(_))
                ));
            }
            // The claims altered (another person) under the tag: refused.
            Form::Mac => {
                let mut h = vouched_by_jinan(&der, form, official, false);
                let sent = h.get(assertion::HEADER).unwrap().to_str().unwrap();
                let (claims, tag) = sent[assertion::MAC_PREFIX.len()..].split_once('.').unwrap();
                let json = String::from_utf8(URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
                let altered = json.replace("zhang.wei", "li.na");
                assert_ne!(altered, json);
                let forged = format!(
                    "{}{}.{tag}",
                    assertion::MAC_PREFIX,
                    URL_SAFE_NO_PAD.encode(altered)
                );
                h.insert(assertion::HEADER, forged.parse().unwrap());
                let e = verify.run(at_qingdao(&h)).unwrap_err();
                assert!(e.to_string().contains("does not verify"), "{e}");
            }
        }
        // A citizen crosses as the home node's pseudonym, with the home node's word on own
        // data.
        let citizen = who(PersonKind::Citizen, "jinan", "portal", "pseudonym-a");
        let h = vouched_by_jinan(&der, form, citizen.clone(), true);
        let (got, claims, _) = verify.run(at_qingdao(&h)).unwrap();
        assert_eq!(got.who, citizen);
        assert!(claims.own);
    }

    #[test]
    fn an_assertion_without_a_kind_is_a_citizens_only_by_its_role() {
        let (_, _, der) = crate::trust::test_node_key();
        drop(der);
        let mut claims = AssertionClaims {
            roles: vec!["citizen".into()],
            own: true,
            knd: String::new(),
            ..AssertionClaims::official("jinan", "qingdao", "portal", "p", "r", "s.S", "M")
        };
        assert_eq!(
            vouched_principal("jinan", &claims).kind,
            PersonKind::Citizen
        );
        claims.roles.clear();
        assert_eq!(
            vouched_principal("jinan", &claims).kind,
            PersonKind::Official
        );
        claims.knd = "system".into();
        assert_eq!(vouched_principal("jinan", &claims).kind, PersonKind::System);
    }

    #[test]
    fn admit_holds_one_of_the_peers_slots_and_tells_the_provider_who_called() {
        let slots = Arc::new(Semaphore::new(1));
        let admit = Admit {
            city: "qingdao",
            peer_city: "jinan",
            streams: Some(&slots),
            max_streams: 1,
        };
        let authorised = || {
            let a = accepted(&[(PRINCIPAL, "kind=system;city=x;org=y;person=forged")]);
            Authorised {
                call: a.call,
                parts: a.parts,
                who: who(PersonKind::Official, "jinan", "hrss", "zhang.wei"),
                intent: intent(false),
                upstream: Upstream::Provider(provider("hrss", &["JQ-03"], true)),
                consent: "c-1".into(),
            }
        };
        let first = admit.run(authorised()).unwrap();
        assert_eq!(
            first.parts.headers.get(PRINCIPAL).unwrap(),
            "kind=official;city=jinan;org=hrss;person=zhang.wei"
        );
        assert_eq!(
            first.parts.headers.get("x-tongban-origin-city").unwrap(),
            "jinan"
        );
        assert!(matches!(
            admit.run(authorised()),
            Err(ProxyError::ResourceExhausted(_))
        ));
        drop(first);
        assert!(admit.run(authorised()).is_ok());
    }
}
