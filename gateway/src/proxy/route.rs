//! Step 2: which city serves a call, then which of its providers or which peer node. A call
//! that names a catalog item (`x-tongban-catalog-code`) goes to the organisation whose
//! registration lists that item, without the caller naming the organisation.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::call::Call;
use super::stage::{Intended, Routed, Upstream};
use super::ProxyError;
use crate::catalog::{LocalService, Snapshot};
use crate::federation::Peer;

/// The routing stage: `Intended → Routed`, from one catalog snapshot.
pub(super) struct Route<'a> {
    /// This node's city.
    pub city: &'a str,
    /// The federation's business catalog (which items exist, which handle personal data).
    pub items: &'a tongban_catalog::Catalog,
    pub snapshot: &'a Snapshot,
    pub peers: &'a BTreeMap<String, Arc<Peer>>,
}

impl Route<'_> {
    /// Home node: a provider of this city, or the peer node of the target city.
    pub fn run(&self, i: Intended) -> Result<Routed, ProxyError> {
        let upstream = self.route(&i.call)?;
        let target_city = match &upstream {
            Upstream::Provider(_) => self.city.to_string(),
            Upstream::Peer(p) => p.city.clone(),
        };
        Ok(self.routed(i, upstream, target_city))
    }

    /// Providing node: only a provider of this city (calls are not relayed to a third).
    pub fn local(&self, mut i: Intended) -> Result<Routed, ProxyError> {
        let target = i
            .call
            .target_city
            .get_or_insert_with(|| self.city.to_string());
        if target != self.city {
            return Err(ProxyError::NotRelayed {
                own: self.city.to_string(),
                target: target.clone(),
            });
        }
        let svc = self.local_provider(&i.call)?;
        Ok(self.routed(i, Upstream::Provider(svc), self.city.to_string()))
    }

    fn routed(&self, i: Intended, upstream: Upstream, target_city: String) -> Routed {
        let personal = self.personal(&upstream, &i.call);
        let presented_consent = match &upstream {
            Upstream::Peer(_) => crate::consent::presented_id(&i.parts.headers),
            Upstream::Provider(_) => None,
        };
        Routed {
            call: i.call,
            parts: i.parts,
            who: i.who,
            intent: i.intent,
            upstream,
            target_city,
            personal,
            presented_consent,
        }
    }

    /// Whether a call touches personal data: a call naming a catalog item exactly when the
    /// federation catalog says the item does; any other call when the registration of the
    /// service says so.
    fn personal(&self, upstream: &Upstream, call: &Call) -> bool {
        match call
            .catalog_code
            .as_deref()
            .and_then(|c| self.items.personal_data(c))
        {
            Some(personal) => personal,
            None => match upstream {
                Upstream::Provider(svc) => svc.record.personal_data,
                Upstream::Peer(p) => self.snapshot.peer_personal(&p.city, &call.service),
            },
        }
    }

    /// The target city (named, or the only one offering the service or item), then a
    /// provider of this city or the peer node of that one.
    fn route(&self, call: &Call) -> Result<Upstream, ProxyError> {
        let snap = self.snapshot;
        let code = call.catalog_code.as_deref();
        if let Some(code) = code {
            if self.items.personal_data(code).is_none() {
                return Err(ProxyError::UnknownItem {
                    code: code.to_string(),
                });
            }
        }
        let city = match &call.target_city {
            Some(c) => c.clone(),
            None => match snap.cities_offering(&call.service, code).as_slice() {
                [] => {
                    return Err(match code {
                        Some(code) => ProxyError::ItemNotOfferedAnywhere {
                            code: code.to_string(),
                        },
                        None => ProxyError::UnknownServiceAnywhere {
                            service: call.service.clone(),
                        },
                    })
                }
                [one] => one.to_string(),
                many => {
                    return Err(ProxyError::AmbiguousCity {
                        service: code.unwrap_or(&call.service).to_string(),
                        cities: many.join(", "),
                    })
                }
            },
        };
        if city == self.city {
            return self.local_provider(call).map(Upstream::Provider);
        }
        let Some(peer) = self.peers.get(&city) else {
            let mut known: Vec<&str> = vec![self.city];
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
            Some(_) if !snap.peer_offers_item(&city, &call.service, code) => {
                Err(not_offered(call, city))
            }
            // Lost (its keepalive went unanswered, or the link broke): fail now rather than
            // spend the caller's deadline; the peer's sync task reconnects in the background.
            Some(_) if !peer.is_up() && peer.endpoint.has_failed() => {
                Err(ProxyError::Unavailable(format!(
                    "peer city `{city}` is unreachable (its node stopped answering; reconnecting)"
                )))
            }
            Some(_) => Ok(Upstream::Peer(peer.clone())),
        }
    }

    /// The one provider of this city offering the service (for the named organisation and
    /// catalog item, when given).
    fn local_provider(&self, call: &Call) -> Result<Arc<LocalService>, ProxyError> {
        let snap = self.snapshot;
        let code = call.catalog_code.as_deref();
        let mut offers = snap.local_providers(&call.service, code).filter(|s| {
            call.target_org
                .as_ref()
                .is_none_or(|o| *o == s.record.organisation)
        });
        let first = offers
            .next()
            .ok_or_else(|| match (&call.target_org, code) {
                (None, Some(_)) => not_offered(call, self.city.to_string()),
                (Some(o), _) => ProxyError::UnknownService {
                    service: format!("{} (organisation {o})", call.service),
                    city: self.city.to_string(),
                },
                (None, None) => ProxyError::UnknownService {
                    service: call.service.clone(),
                    city: self.city.to_string(),
                },
            })?;
        let rest: Vec<_> = offers.collect();
        if !rest.is_empty() {
            let mut orgs = vec![first.record.organisation.clone()];
            orgs.extend(rest.iter().map(|s| s.record.organisation.clone()));
            return Err(ProxyError::AmbiguousOrg {
                service: call.service.clone(),
                city: self.city.to_string(),
                orgs: orgs.join(", "),
            });
        }
        Ok(first.clone())
    }
}

/// The service, or the catalog item the call names, is not offered by `city`.
fn not_offered(call: &Call, city: String) -> ProxyError {
    match &call.catalog_code {
        Some(code) => ProxyError::ItemNotOffered {
            code: code.clone(),
            city,
        },
        None => ProxyError::UnknownService {
            service: call.service.clone(),
            city,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use tongban_proto::federation::v1::SignedCatalog;
    use tongban_proto::metadata::PersonKind;

    use super::*;
    use crate::catalog::{PeerCatalog, PeerService};
    use crate::proxy::call::Intent;
    use crate::proxy::stage::testing::{accepted, provider, who, V2};
    use crate::upstream::Endpoint;

    /// Jinan's view: its hrss provides JQ-03 (personal) and JQ-19 is not registered here;
    /// Qingdao's catalog offers JQ-03 at its hrss.
    fn snapshot() -> Snapshot {
        let peer = PeerCatalog {
            city: "qingdao".into(),
            version: 1,
            issued_at_ms: 0,
            services: vec![PeerService {
                organisation: "hrss".into(),
                service: V2.into(),
                catalog_codes: vec!["JQ-03".into()],
                personal_data: false,
                description: String::new(),
            }],
            revoked_consents: HashSet::new(),
        };
        Snapshot {
            city: "jinan".into(),
            local_version: 1,
            local: vec![provider("hrss", &["JQ-03"], true)],
            peers: [("qingdao".to_string(), Arc::new(peer))].into(),
            signed_local: Arc::new(SignedCatalog::default()),
            revoked_consents: HashSet::new(),
        }
    }

    fn peers() -> BTreeMap<String, Arc<Peer>> {
        let ep = Arc::new(Endpoint::provider("http://127.0.0.1:9").unwrap());
        let peer = Arc::new(Peer::new("qingdao".into(), ep.clone(), ep));
        [("qingdao".to_string(), peer)].into()
    }

    fn intended(metadata: &[(&str, &str)]) -> Intended {
        let a = accepted(metadata);
        Intended {
            intent: Intent {
                purpose: "case-handling".into(),
                catalog_code: a.call.catalog_code.clone(),
                subject: None,
                own: false,
            },
            call: a.call,
            parts: a.parts,
            who: who(PersonKind::Official, "jinan", "gjj", "x"),
        }
    }

    #[test]
    fn route_by_item_and_city_and_say_whether_personal_data_passes() {
        let items = tongban_catalog::Catalog::embedded().unwrap();
        let (snap, peers) = (snapshot(), peers());
        let route = Route {
            city: "jinan",
            items: &items,
            snapshot: &snap,
            peers: &peers,
        };
        let code = |c: &'static str, city: &'static str| {
            intended(&[
                ("x-tongban-catalog-code", c),
                ("x-tongban-target-city", city),
            ])
        };
        // Here, to the organisation registered for the item; personal by the catalog.
        let r = route.run(code("JQ-03", "jinan")).unwrap();
        assert!(matches!(&r.upstream, Upstream::Provider(s) if s.record.organisation == "hrss"));
        assert_eq!(r.target_city, "jinan");
        assert!(r.personal);
        // To Qingdao's node: the catalog's word on the item wins over the registration's.
        let r = route.run(code("JQ-03", "qingdao")).unwrap();
        assert!(matches!(&r.upstream, Upstream::Peer(p) if p.city == "qingdao"));
        assert!(r.personal);
        // An item nobody here registered, an unknown item, an unknown city.
        let e = |i| route.run(i).err().unwrap();
        assert!(matches!(
            e(code("JQ-19", "jinan")),
            ProxyError::ItemNotOffered { .. }
        ));
        assert!(matches!(
            e(code("JQ-99", "jinan")),
            ProxyError::UnknownItem { .. }
        ));
        assert!(matches!(
            e(code("JQ-03", "beijing")),
            ProxyError::UnknownCity { .. }
        ));
        // Offered in both cities and no city named: the caller must choose.
        let both = intended(&[("x-tongban-catalog-code", "JQ-03")]);
        assert!(matches!(e(both), ProxyError::AmbiguousCity { .. }));
        // The providing node routes only to its own providers, never on to a third city.
        assert!(route.local(code("JQ-03", "jinan")).is_ok());
        assert!(matches!(
            route.local(code("JQ-03", "qingdao")).err().unwrap(),
            ProxyError::NotRelayed { .. }
        ));
    }
}
