//! The typed values a call becomes on its way through a node (DESIGN §2; linkerd2-proxy's
//! target types are the model). Each stage consumes the value of the stage before it and
//! returns the next:
//!
//! `Accepted → Authenticated → Intended → Routed → Authorised → Ready`
//!
//! so no step can run before the one it depends on, and each stage is tested alone with the
//! value it takes. The stages live with their job: [`super::home`] (the caller's principal,
//! vouching across the boundary), [`super::provider`] (the peer's assertion, admission),
//! [`super::checks`] (the intent, the policy and the consent), [`super::route`].

use std::sync::Arc;

use http::request::Parts;
use tongban_proto::metadata::{PersonKind, VouchedPrincipal};

use super::call::{Call, Intent};
use crate::catalog::LocalService;
use crate::federation::Peer;

/// Who is behind a call, as this node knows it: the principal its listener made from the
/// caller's token (home), or the one the peer's node vouched for (providing node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Who {
    pub principal: VouchedPrincipal,
    pub roles: Vec<String>,
}

impl Who {
    /// `city/org`, the form of policy rules, consents' grantees and `x-tongban-caller`.
    pub fn caller_id(&self) -> String {
        self.principal.caller()
    }

    pub fn is_citizen(&self) -> bool {
        self.principal.kind == PersonKind::Citizen
    }
}

/// Where a call goes next.
pub(super) enum Upstream {
    /// A provider registered in this city.
    Provider(Arc<LocalService>),
    /// The node of another city, over the mTLS channel.
    Peer(Arc<Peer>),
}

/// A call this node looks at: it is serving, and the path and metadata are readable.
#[derive(Debug)]
pub(super) struct Accepted {
    pub call: Call,
    pub parts: Parts,
}

/// The call, and who is behind it.
#[derive(Debug)]
pub(super) struct Authenticated {
    pub call: Call,
    pub parts: Parts,
    pub who: Who,
}

/// The call, who is behind it, and why and about whom it is made.
#[derive(Debug)]
pub(super) struct Intended {
    pub call: Call,
    pub parts: Parts,
    pub who: Who,
    pub intent: Intent,
}

/// The call and where it goes: a provider of this city or the node of another.
pub(super) struct Routed {
    pub call: Call,
    pub parts: Parts,
    pub who: Who,
    pub intent: Intent,
    pub upstream: Upstream,
    /// The city that serves the call.
    pub target_city: String,
    /// Whether it touches personal data (the catalog's word on the item, else the
    /// registration's).
    pub personal: bool,
    /// Going to the peer: the id of the consent the call presents (unverified; the
    /// providing node checks it), for this node's record.
    pub presented_consent: Option<String>,
}

/// The call as this node's policy allowed it, with the consent it was checked against
/// (`own-data`, a consent id, or empty when none was needed or, at the home node of a
/// cross-city call, the id presented for the providing node to check).
pub(super) struct Authorised {
    pub call: Call,
    pub parts: Parts,
    pub who: Who,
    pub intent: Intent,
    pub upstream: Upstream,
    pub consent: String,
}

/// What the stages' unit tests start from: calls, principals and services made in memory,
/// without a socket or a node.
#[cfg(test)]
pub(super) mod testing {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use http::request::Parts;
    use tongban_proto::metadata::{PersonKind, VouchedPrincipal};

    use super::{Accepted, Who};
    use crate::catalog::LocalService;
    use crate::proxy::call::Call;
    use crate::registry::ServiceRecord;
    use crate::upstream::EndpointSet;

    pub const V2: &str = "tongban.crosscity.v2.CrossCityService";

    /// The parts of a gRPC request to `V2/Submit` with `metadata`.
    pub fn parts(metadata: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder()
            .method("POST")
            .uri(format!("/{V2}/Submit"))
            .header("content-type", "application/grpc");
        for (k, v) in metadata {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    /// A call accepted with `metadata`, request id `rid-1`.
    pub fn accepted(metadata: &[(&str, &str)]) -> Accepted {
        let parts = parts(metadata);
        let call = Call::parse(&parts, &crate::config::Limits::default(), "rid-1".into()).unwrap();
        Accepted { call, parts }
    }

    pub fn who(kind: PersonKind, city: &str, org: &str, person: &str) -> Who {
        Who {
            principal: VouchedPrincipal {
                kind,
                city: city.into(),
                org: org.into(),
                person: person.into(),
            },
            roles: Vec::new(),
        }
    }

    /// `org`'s provider of `V2`, registered for `codes`.
    pub fn provider(org: &str, codes: &[&str], personal_data: bool) -> Arc<LocalService> {
        Arc::new(LocalService {
            record: ServiceRecord {
                organisation: org.into(),
                service: V2.into(),
                endpoints: vec!["http://127.0.0.1:9".into()],
                catalog_codes: codes.iter().map(|c| c.to_string()).collect(),
                personal_data,
                description: String::new(),
            },
            endpoints: Arc::new(EndpointSet::new(Vec::new())),
        })
    }
}
