//! Step 2: which city serves a call, then which of its providers or which peer node.

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
    /// The target city (named, or the only one offering the service), then a provider of
    /// this city or the peer node of that one.
    pub(super) fn route(&self, snap: &Snapshot, call: &Call) -> Result<Upstream, ProxyError> {
        let city = match &call.target_city {
            Some(c) => c.clone(),
            None => match snap.cities_offering(&call.service).as_slice() {
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
            Some(_) => Ok(Upstream::Peer(peer.clone())),
        }
    }

    /// The one provider of this city offering the service (and the named organisation).
    pub(super) fn local_provider(
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
}
