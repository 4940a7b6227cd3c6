//! The checks both sides make, as stages: the call is acceptable at all (request id, node
//! state, path, metadata size: [`Proxy::accept`]), why and about whom it is made
//! ([`Intend`]), and whether this node allows it: its policy, the person behind a call about
//! personal data, and, at the providing node, the citizen's consent ([`Authorise`]).

use std::sync::Arc;

use http::request::Parts;
use http::HeaderMap;

use super::call::{Call, Intent};
use super::stage::{Accepted, Authenticated, Authorised, Intended, Routed, Upstream, Who};
use super::{Proxy, ProxyError};
use crate::audit::exchange::Exchange;
use crate::auth::AuthError;
use crate::consent::{self, VerifiedConsents};
use crate::policy::{Policy, PolicyRequest};
use crate::subject::{self, Pseudonymizer};

impl Proxy {
    /// The call as such: this node serving, the call readable, its metadata within
    /// `limits.max_metadata_bytes`.
    pub(super) fn accept(&self, ex: &mut Exchange, parts: Parts) -> Result<Accepted, ProxyError> {
        if let Some(why) = self.auditor.refusal() {
            // A peer holds a checkpoint this node's audit log contradicts (serve nothing
            // until an operator has looked), or no peer has confirmed the log yet and the
            // node waits for one (`audit.anchor = "wait"`).
            return Err(ProxyError::Unavailable(format!(
                "{} refuses to serve: {why}",
                self.city
            )));
        }
        let call = Call::parse(&parts, &self.limits, ex.request_id().to_string())?;
        ex.call(&call.service, &call.method);
        let size: u64 = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
            .sum();
        if size > self.limits.max_metadata_bytes {
            return Err(ProxyError::ResourceExhausted(format!(
                "metadata of {size} bytes exceeds the limit of {} bytes (limits.max_metadata_bytes)",
                self.limits.max_metadata_bytes
            )));
        }
        Ok(Accepted { call, parts })
    }
}

/// What the home node vouched for, which the providing node takes instead of re-deciding.
pub(super) struct VouchedIntent<'a> {
    pub purpose: &'a str,
    /// The citizen, signed in at home, about themselves.
    pub own: bool,
}

/// The intent stage: `Authenticated → Intended`, the purpose, the catalog item and the
/// subject (as this node's pseudonym), and whether the call is a citizen's about themselves.
pub(super) struct Intend<'a> {
    pub pseudonyms: &'a Pseudonymizer,
    /// At the providing node: the home node's word on the purpose and on own data.
    pub vouched: Option<VouchedIntent<'a>>,
}

impl Intend<'_> {
    pub fn run(&self, a: Authenticated) -> Result<Intended, ProxyError> {
        let vouched_purpose = self.vouched.as_ref().map(|v| v.purpose);
        let mut intent =
            Intent::parse(&a.parts.headers, &a.call, self.pseudonyms, vouched_purpose)?;
        intent.own = match &self.vouched {
            Some(v) => v.own && a.who.is_citizen(),
            None => own_data(&a.who, &intent)?,
        };
        Ok(Intended {
            call: a.call,
            parts: a.parts,
            who: a.who,
            intent,
        })
    }
}

/// The one "own data" rule, at the node that signed the citizen in: a citizen token about
/// the citizen themselves needs no consent; a citizen token about anyone else is refused (a
/// citizen acts only for themselves). The providing node takes the home node's word for it.
fn own_data(who: &Who, intent: &Intent) -> Result<bool, ProxyError> {
    if !who.is_citizen() {
        return Ok(false);
    }
    match intent.subject.as_deref() {
        None => Ok(false),
        Some(subject) if !who.principal.person.is_empty() && who.principal.person == subject => {
            Ok(true)
        }
        Some(_) => Err(ProxyError::NotOwnSubject),
    }
}

/// How the providing node checks a consent: the issuing city's node key, that city's
/// revocations, and the consents it verified before.
pub(super) struct ConsentCheck<'a> {
    pub issuer_key: &'a dyn Fn(&str) -> Option<Arc<Vec<u8>>>,
    pub revoked: &'a dyn Fn(&str, &str) -> bool,
    pub cache: &'a VerifiedConsents,
}

/// The authorisation stage: `Routed → Authorised`. A call about personal data needs a person
/// behind it; this node's policy must allow it (both cities decide, each by its own rules);
/// at the node that hands the call to its own provider, a personal-data call needs the
/// citizen's consent for exactly this item (or is the citizen's own).
pub(super) struct Authorise<'a> {
    /// This node's city.
    pub city: &'a str,
    pub policy: &'a Policy,
    pub consents: ConsentCheck<'a>,
}

impl Authorise<'_> {
    pub fn run(&self, r: Routed) -> Result<Authorised, ProxyError> {
        if r.personal && r.who.principal.person.is_empty() {
            return Err(ProxyError::Auth(AuthError::NoPerson));
        }
        self.policy_allows(&r)?;
        let consent = match &r.upstream {
            Upstream::Provider(_) => self.consent(&r)?,
            // The providing node checks the consent; the id presented is recorded here (a
            // citizen about themselves shows none: their own data).
            Upstream::Peer(_) if r.intent.own => consent::OWN_DATA.to_string(),
            Upstream::Peer(_) => r.presented_consent.clone().unwrap_or_default(),
        };
        Ok(Authorised {
            call: r.call,
            parts: r.parts,
            who: r.who,
            intent: r.intent,
            upstream: r.upstream,
            consent,
        })
    }

    /// Steps 3 and 6: this node's policy on the call.
    fn policy_allows(&self, r: &Routed) -> Result<(), ProxyError> {
        let req = PolicyRequest {
            caller_city: &r.who.principal.city,
            caller_org: &r.who.principal.org,
            roles: &r.who.roles,
            target_city: &r.target_city,
            service: &r.call.service,
            method: &r.call.method,
            purpose: &r.intent.purpose,
            catalog_code: r.intent.catalog_code.as_deref(),
        };
        let decision = self.policy.decide(&req);
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

    /// The providing node's consent check for personal data: signature (by the issuing
    /// city's node), subject, grantee, target city, service, catalog item, purpose, expiry
    /// and revocation. Returns the consent id (empty when none is needed).
    fn consent(&self, r: &Routed) -> Result<String, ProxyError> {
        if !r.personal {
            return Ok(String::new());
        }
        if r.intent.own {
            // The citizen, signed in, about themselves: recorded as such in the audit.
            return Ok(consent::OWN_DATA.to_string());
        }
        let h: &HeaderMap = &r.parts.headers;
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let caller = r.who.caller_id();
        let scope = consent::ConsentScope {
            subject: text(subject::HEADER),
            caller: &caller,
            target_city: self.city,
            service: &r.call.service,
            catalog_code: r.call.catalog_code.as_deref(),
            purpose: &r.intent.purpose,
        };
        consent::verify(
            text(consent::HEADER),
            &scope,
            self.consents.issuer_key,
            self.consents.revoked,
            self.consents.cache,
        )
        .map(|c| c.jti)
        .map_err(|source| ProxyError::Consent {
            city: self.city.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tongban_proto::metadata::PersonKind;

    use super::*;
    use crate::consent::{subject_digest, ConsentClaims, ConsentError};
    use crate::proxy::stage::testing::{accepted, provider, who, V2};

    /// A valid resident id (GB 11643) from its first 17 digits.
    fn resident(first17: &str) -> String {
        format!("{first17}{}", subject::check_digit(first17).unwrap())
    }

    fn my_id() -> String {
        resident("37010219850312002")
    }

    fn other_id() -> String {
        resident("37010219700101005")
    }

    fn pseudonyms() -> (tempfile::TempDir, Pseudonymizer) {
        let dir = tempfile::tempdir().unwrap();
        let p = Pseudonymizer::open(dir.path()).unwrap();
        (dir, p)
    }

    fn about(subject: &str) -> Vec<(&'static str, String)> {
        vec![
            ("x-tongban-purpose", "case-handling".into()),
            ("x-tongban-subject", subject.into()),
            ("x-tongban-catalog-code", "JQ-03".into()),
        ]
    }

    fn authenticated(metadata: &[(&str, String)], who: Who) -> Authenticated {
        let refs: Vec<(&str, &str)> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = accepted(&refs);
        Authenticated {
            call: a.call,
            parts: a.parts,
            who,
        }
    }

    #[test]
    fn intend_knows_a_citizens_own_data_and_refuses_them_anyone_elses() {
        let (_dir, p) = pseudonyms();
        let home = Intend {
            pseudonyms: &p,
            vouched: None,
        };
        let me = who(
            PersonKind::Citizen,
            "jinan",
            "portal",
            &p.pseudonym(&my_id()),
        );
        let got = home
            .run(authenticated(&about(&my_id()), me.clone()))
            .unwrap();
        assert!(got.intent.own);
        assert_eq!(got.intent.subject, Some(p.pseudonym(&my_id())));
        assert_eq!(got.intent.catalog_code.as_deref(), Some("JQ-03"));
        let e = home
            .run(authenticated(&about(&other_id()), me.clone()))
            .unwrap_err();
        assert!(matches!(e, ProxyError::NotOwnSubject), "{e}");
        // No subject: not own data, not refused (a call about nobody).
        let none = [("x-tongban-purpose", "case-handling".to_string())];
        assert!(!home.run(authenticated(&none, me)).unwrap().intent.own);
        // An official is never "own data", whoever the subject is.
        let official = who(
            PersonKind::Official,
            "jinan",
            "hrss",
            &p.pseudonym(&my_id()),
        );
        assert!(
            !home
                .run(authenticated(&about(&my_id()), official.clone()))
                .unwrap()
                .intent
                .own
        );
        // At the providing node: the home node's purpose and word on own data, for a
        // citizen only.
        let provider = Intend {
            pseudonyms: &p,
            vouched: Some(VouchedIntent {
                purpose: "medical-treatment",
                own: true,
            }),
        };
        let got = provider
            .run(authenticated(&about(&other_id()), official))
            .unwrap();
        assert_eq!(got.intent.purpose, "medical-treatment");
        assert!(!got.intent.own);
        let citizen = who(PersonKind::Citizen, "jinan", "portal", "home-pseudonym");
        assert!(
            provider
                .run(authenticated(&about(&other_id()), citizen))
                .unwrap()
                .intent
                .own
        );
        // A malformed purpose names the metadata key.
        let bad = [("x-tongban-purpose", "Case Handling".to_string())];
        let e = home
            .run(authenticated(
                &bad,
                who(PersonKind::Official, "jinan", "hrss", "x"),
            ))
            .unwrap_err();
        assert!(e.to_string().contains("x-tongban-purpose"), "{e}");
    }

    const POLICY: &str = r#"
[[rules]]
name = "jinan departments for case handling"
effect = "allow"
callers = ["jinan/*"]
services = ["tongban.crosscity.v2.CrossCityService"]
purposes = ["case-handling"]
"#;

    /// A call routed to this node's provider of JQ-03 (personal data) about [`my_id`].
    fn routed(p: &Pseudonymizer, who: Who, consent: Option<&str>, own: bool) -> Routed {
        let mut md = about(&my_id());
        if let Some(c) = consent {
            md.push(("x-tongban-consent", c.to_string()));
        }
        let i = Intend {
            pseudonyms: p,
            vouched: None,
        }
        .run(authenticated(&md, who.clone()))
        .unwrap();
        let mut intent = i.intent;
        intent.own = own;
        Routed {
            call: i.call,
            parts: i.parts,
            who,
            intent,
            upstream: Upstream::Provider(provider("hrss", &["JQ-03"], true)),
            target_city: "jinan".into(),
            personal: true,
            presented_consent: None,
        }
    }

    #[test]
    fn authorise_needs_a_person_the_policy_and_a_consent_for_exactly_the_item() {
        let (_dir, p) = pseudonyms();
        let policy = Policy::parse(POLICY).unwrap();
        let (signer, public, _) = crate::trust::test_node_key();
        let key = |_: &str| Some(public.clone());
        let revoked = |_: &str, id: &str| id == "c-revoked";
        let cache = VerifiedConsents::new(16);
        let authorise = Authorise {
            city: "jinan",
            policy: &policy,
            consents: ConsentCheck {
                issuer_key: &key,
                revoked: &revoked,
                cache: &cache,
            },
        };
        let now = crate::assertion::now_s();
        let consent = |id: &str, items: &[&str]| {
            signer
                .sign(&ConsentClaims {
                    iss: "jinan".into(),
                    jti: id.into(),
                    sbj: subject_digest(id, &my_id()),
                    gnt: "jinan/hrss".into(),
                    tgt: "jinan".into(),
                    svc: V2.into(),
                    itm: items.iter().map(|i| i.to_string()).collect(),
                    pur: "case-handling".into(),
                    iat: now,
                    exp: now + 600,
                })
                .unwrap()
        };
        let official = who(PersonKind::Official, "jinan", "hrss", "zhang.wei");
        let ok = consent("c-1", &["JQ-03"]);
        let got = authorise
            .run(routed(&p, official.clone(), Some(&ok), false))
            .unwrap();
        assert_eq!(got.consent, "c-1");
        // Nobody behind the token: refused before anything else.
        let nobody = who(PersonKind::Official, "jinan", "hrss", "");
        assert!(matches!(
            authorise.run(routed(&p, nobody, Some(&ok), false)),
            Err(ProxyError::Auth(AuthError::NoPerson))
        ));
        // Another city's organisation: no rule allows it.
        let qd = who(PersonKind::Official, "qingdao", "hrss", "li.na");
        assert!(matches!(
            authorise.run(routed(&p, qd, Some(&ok), false)),
            Err(ProxyError::PermissionDenied(_))
        ));
        // No consent, a consent for another item, a revoked one.
        let refused = |c: Option<&str>| match authorise.run(routed(&p, official.clone(), c, false))
        {
            Err(ProxyError::Consent { source, .. }) => source,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("allowed"),
        };
        assert!(matches!(refused(None), ConsentError::Missing(_)));
        let jq16 = consent("c-2", &["JQ-16"]);
        assert!(matches!(refused(Some(&jq16)), ConsentError::OutOfScope(_)));
        let gone = consent("c-revoked", &["JQ-03"]);
        assert!(matches!(refused(Some(&gone)), ConsentError::Revoked(_)));
        // The citizen about themselves: no consent, recorded as their own data.
        let me = who(
            PersonKind::Citizen,
            "jinan",
            "portal",
            &p.pseudonym(&my_id()),
        );
        let got = authorise.run(routed(&p, me, None, true)).unwrap();
        assert_eq!(got.consent, consent::OWN_DATA);
    }
}
