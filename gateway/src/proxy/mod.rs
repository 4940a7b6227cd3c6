//! The data plane: a transparent gRPC proxy. It reads the path and metadata of a call, never
//! its payload, and forwards HTTP/2 frames to a local provider or across the boundary to the
//! peer node of the target city.
//!
//! The two entry points read as the path of one call in DESIGN §2: [`Proxy::from_caller`]
//! (the home node, [`home`]) and [`Proxy::from_peer`] (the providing node, [`provider`]).
//! Each is a sequence of named steps joined with `?`; [`Proxy::finish`] is the one place
//! where an error becomes an audited refusal. The modules, in the order a call meets them:
//!
//! - [`call`]: what a call asks for, from its path and metadata;
//! - [`stage`]: the typed values a call becomes, stage by stage
//!   (`Accepted → Authenticated → Intended → Routed → Authorised → Ready`);
//! - [`checks`]: acceptable at all, the intent, this node's policy, the citizen's consent;
//! - [`route`]: which provider, or which peer node;
//! - [`home`], [`provider`]: the steps of each side, and their own stages;
//! - [`headers`]: what is stripped, set and pinned on the way;
//! - [`forward`]: upstream and back, audited before the final status leaves;
//! - [`error`]: why a call was refused, mapped to a status once.

mod call;
mod checks;
mod error;
mod forward;
mod headers;
mod home;
mod provider;
mod route;
mod stage;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tongban_proto::audit::v1::Side;
use tonic::body::Body;
use tracing::Instrument as _;

pub use error::ProxyError;
pub use tongban_proto::metadata::{
    CALLER, CATALOG_CODE, ORIGIN_CITY, PURPOSE, TARGET_CITY, TARGET_ORG,
};

use crate::assertion::{self, ReplayCache};
use crate::audit::exchange::Exchange;
use crate::audit::Auditor;
use crate::auth::Authenticator;
use crate::catalog::{self, Catalog};
use crate::config::Limits;
use crate::federation::Peer;
use crate::grpc;
use crate::policy::PolicyStore;
use crate::ratelimit::RateLimiter;
use crate::subject::Pseudonymizer;
use crate::trust::PeerIdentity;
use call::Call;
use stage::Upstream;

/// What the proxy checks calls with (DESIGN §6).
pub struct TrustChecks {
    pub auth: Arc<Authenticator>,
    pub policy: Arc<PolicyStore>,
    pub signer: assertion::Signer,
    pub replay: ReplayCache,
    pub pseudonyms: Arc<Pseudonymizer>,
    pub rate: RateLimiter,
    /// This node's raw public key (verifies the consents it issued).
    pub own_key: Arc<Vec<u8>>,
    /// Consents already verified here (a citizen's consent is presented on every call).
    pub consents: crate::consent::VerifiedConsents,
}

/// The proxy of one node.
pub struct Proxy {
    pub city: String,
    pub auditor: Arc<Auditor>,
    pub catalog: Arc<Catalog>,
    /// The federation's business catalog: which items exist, which handle personal data.
    pub items: Arc<tongban_catalog::Catalog>,
    pub peers: BTreeMap<String, Arc<Peer>>,
    pub limits: Limits,
    pub trust: TrustChecks,
    /// Calls in flight from each peer city (limits.max_streams_per_peer).
    pub peer_streams: HashMap<String, Arc<Semaphore>>,
    /// The node's metrics.
    pub metrics: Arc<tongban_telemetry::NodeMetrics>,
}

/// The request body of a call: hyper's own for HTTP/2 callers and peers, a translated one
/// for browsers (gRPC-Web, [`crate::web`]). The proxy never reads it beyond the 5-byte
/// message prefixes.
pub trait CallBody:
    http_body::Body<Data = bytes::Bytes, Error: std::fmt::Display> + Send + 'static
{
}

impl<B> CallBody for B
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
}

/// A call that passed every check of this node, ready to go upstream.
struct Ready {
    call: Call,
    parts: Parts,
    upstream: Upstream,
    /// The peer's concurrency slot, held until the response ends.
    permit: Option<OwnedSemaphorePermit>,
    /// For the peer: the caller assertion, signed once the connection (whose channel
    /// binding it names) is known.
    assertion: Option<Box<assertion::AssertionClaims>>,
}

impl Proxy {
    /// The intent stage with this node's pseudonyms (`vouched`: at the providing node).
    fn intend<'a>(&'a self, vouched: Option<checks::VouchedIntent<'a>>) -> checks::Intend<'a> {
        checks::Intend {
            pseudonyms: &self.trust.pseudonyms,
            vouched,
        }
    }

    /// The routing stage over `snapshot`.
    fn route<'a>(&'a self, snapshot: &'a catalog::Snapshot) -> route::Route<'a> {
        route::Route {
            city: &self.city,
            items: &self.items,
            snapshot,
            peers: &self.peers,
        }
    }

    /// The authorisation stage, with this node's policy and what it checks consents with
    /// (its own key and its peers' keys, the revocations in `snapshot`).
    fn authorise(
        &self,
        snapshot: &catalog::Snapshot,
        routed: stage::Routed,
    ) -> Result<stage::Authorised, ProxyError> {
        let issuer_key = |city: &str| {
            if city == self.city {
                Some(self.trust.own_key.clone())
            } else {
                self.peers.get(city).and_then(|p| p.node_key())
            }
        };
        let revoked = |city: &str, id: &str| snapshot.consent_revoked(city, id);
        let policy = self.trust.policy.current();
        checks::Authorise {
            city: &self.city,
            policy: &policy,
            consents: checks::ConsentCheck {
                issuer_key: &issuer_key,
                revoked: &revoked,
                cache: &self.trust.consents,
            },
        }
        .run(routed)
    }

    /// Home ingress: a call from a system of this node's city.
    pub async fn from_caller<B: CallBody>(&self, req: Request<B>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let (mut ex, bad_id) = self.exchange(&parts.headers, Side::Local);
        let span = ex.span().clone();
        async move {
            let ready = match bad_id {
                Some(e) => Err(e),
                None => self.home_steps(&mut ex, parts).await,
            };
            self.finish(ready, body, ex).await
        }
        .instrument(span)
        .await
    }

    /// Peer ingress: a call forwarded by the node of another city.
    pub async fn from_peer(&self, peer: PeerIdentity, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let (mut ex, bad_id) = self.exchange(&parts.headers, Side::Provider);
        ex.from_peer(&peer.city, &self.city);
        let span = ex.span().clone();
        async move {
            let ready = match bad_id {
                Some(e) => Err(e),
                None => self.provider_steps(&mut ex, &peer, parts).await,
            };
            self.finish(ready, body, ex).await
        }
        .instrument(span)
        .await
    }

    /// The record of this exchange on this node, keyed by the caller's request id (or a new
    /// one; a malformed id is the refusal to give), and its span, which continues the
    /// caller's trace. Every log line of the call carries the request id (the key to both
    /// cities' audit) and the trace id; the span's other fields are filled when it ends.
    fn exchange(&self, h: &HeaderMap, side: Side) -> (Exchange, Option<ProxyError>) {
        let (request_id, bad) = call::request_id_of(h);
        let side_name = if side == Side::Provider {
            "provider"
        } else {
            "home"
        };
        // A recorded trace's span carries the exchange's attributes (filled when it ends);
        // any other call's span is only for the logs: just what every line of the call needs,
        // formatted once, and never seen by the span exporter.
        let sampled = tongban_telemetry::trace::head_sampled(h);
        let span = if sampled {
            tracing::info_span!(
                "call",
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                request_id = %request_id,
                trace_id = tracing::field::Empty,
                side = side_name,
                tongban.city = %self.city,
                tongban.caller_city = tracing::field::Empty,
                tongban.caller_org = tracing::field::Empty,
                tongban.target_city = tracing::field::Empty,
                tongban.target_org = tracing::field::Empty,
                tongban.purpose = tracing::field::Empty,
                tongban.catalog_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = tracing::field::Empty,
                rpc.method = tracing::field::Empty,
                rpc.grpc.status_code = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                target: tongban_telemetry::trace::LOG_ONLY,
                "call",
                request_id = %request_id,
                trace_id = tracing::field::Empty,
                side = side_name,
            )
        };
        let trace_id = tongban_telemetry::trace::continue_trace(&span, h, sampled);
        let ex = Exchange::new(
            self.auditor.clone(),
            self.metrics.clone(),
            &self.city,
            (&request_id, trace_id),
            side,
            (span, sampled),
        );
        (ex, bad)
    }

    /// Forwards a checked call, or refuses it: the one place where an error becomes a
    /// refusal, audited before its status leaves.
    async fn finish<B: CallBody>(
        &self,
        ready: Result<Ready, ProxyError>,
        body: B,
        mut ex: Exchange,
    ) -> Response<Body> {
        let sent = match ready {
            Ok(ready) => self.send(ready, body, &mut ex).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(sent) => self.respond(sent, ex).await,
            Err(e) => self.refuse(ex, e).await,
        }
    }

    /// Refuses a call with `e`, after its audit record is durable.
    async fn refuse(&self, mut ex: Exchange, e: ProxyError) -> Response<Body> {
        let status = e.status();
        // A status the provider or the other node answered is passed on, not refused here.
        if !matches!(e, ProxyError::Passthrough(_)) {
            let reason = crate::error::ApiError::reason(&e);
            ex.refused(reason);
            self.metrics
                .refusals
                .get_or_create(&tongban_telemetry::metrics::RefusalLabels {
                    kind: crate::error::refusal_kind(reason).to_string(),
                    reason: reason.to_string(),
                })
                .inc();
        }
        let request_id = ex.request_id().to_string();
        if let ProxyError::RateLimited(r) = &e {
            self.metrics
                .rate_limited
                .get_or_create(&tongban_telemetry::metrics::CallerLabels {
                    caller: r.caller.clone(),
                })
                .inc();
        }
        tracing::debug!(%request_id, code = ?status.code(), error = %e, "call refused");
        let end = grpc::End {
            code: status.code() as i32,
            message: status.message().to_string(),
            trailers: HeaderMap::new(),
            response: grpc::Tally::default(),
        };
        let mut resp = grpc::status_response(status, &request_id);
        match forward::complete(ex, end).await {
            Ok(extra) => resp.headers_mut().extend(extra),
            Err(_) => tracing::error!(%request_id, "refusal could not be audited"),
        }
        resp
    }
}
