//! Step 2: which city serves a call, then which of its providers or which peer node. A call
//! that names a catalog item (`x-tongban-catalog-code`) goes to the organisation whose
//! registration lists that item, without the caller naming the organisation.

use std::sync::Arc;

use super::call::Call;
use super::{Proxy, ProxyError};
use crate::catalog::{LocalService, Snapshot};
use crate::federation::Peer;

/// Where a call goes next.
pub(super) enum Upstream {
    /// A provider registered in this city.
    Provider(Arc<LocalService>),
    /// The node of another city, over the mTLS channel.
    Peer(Arc<Peer>),
}

impl Proxy {
    /// The target city (named, or the only one offering the service or item), then a
    /// provider of this city or the peer node of that one.
    pub(super) fn route(&self, snap: &Snapshot, call: &Call) -> Result<Upstream, ProxyError> {
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
            return self.local_provider(snap, call).map(Upstream::Provider);
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
    pub(super) fn local_provider(
        &self,
        snap: &Snapshot,
        call: &Call,
    ) -> Result<Arc<LocalService>, ProxyError> {
        let code = call.catalog_code.as_deref();
        let mut offers = snap.local_providers(&call.service, code).filter(|s| {
            call.target_org
                .as_ref()
                .is_none_or(|o| *o == s.record.organisation)
        });
        let first = offers
            .next()
            .ok_or_else(|| match (&call.target_org, code) {
                (None, Some(_)) => not_offered(call, self.city.clone()),
                (Some(o), _) => ProxyError::UnknownService {
                    service: format!("{} (organisation {o})", call.service),
                    city: self.city.clone(),
                },
                (None, None) => ProxyError::UnknownService {
                    service: call.service.clone(),
                    city: self.city.clone(),
                },
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
