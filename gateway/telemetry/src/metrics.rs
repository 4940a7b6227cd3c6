//! A node's Prometheus metrics, one registry per node (two nodes in one process, as in the
//! demo, keep theirs apart), encoded by `prometheus-client`.
//!
//! Latency buckets are powers of two (122 µs … 16 s): they coincide with the bucket bounds
//! of a native histogram of schema 0, so a classic scrape and a native one agree.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`NodeMetrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct `service` label values kept; further ones are counted as `other` (a caller
/// cannot grow the node's memory by calling made-up services).
const MAX_SERVICES: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `home` (a call from this city's systems), `provider` (from a peer node) or `local`
    /// (served by a provider of this city).
    pub side: String,
    pub caller_city: String,
    pub target_city: String,
    pub service: String,
    /// The gRPC status name (`OK`, `PERMISSION_DENIED`, …).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub side: String,
    pub caller_city: String,
    pub target_city: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CityLabels {
    pub city: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `failed`.
    pub outcome: String,
}

/// A refusal this node made: its `ErrorInfo` reason and the kind the regulators' report
/// groups it in (consent, policy, unknown_item, unavailable, other).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallerLabels {
    /// `city/organisation`.
    pub caller: String,
}

/// What the audit writer reports. Cheap to clone (the metrics are shared handles); the
/// default is a set registered nowhere, for a log opened outside a node.
#[derive(Clone, Debug)]
pub struct AuditMetrics {
    /// Records waiting for the writer when it takes a batch.
    pub queue_depth: Gauge,
    /// Records per group commit.
    pub group_commit_records: Histogram,
    /// Write (and, in sync mode, fsync) of one group commit.
    pub commit_seconds: Histogram,
    /// 1 while the audit log can be written, 0 when a write or the probe failed.
    pub writable: Gauge,
    /// 1 once a peer confirmed the node's audit log (or it has no peers), 0 until then.
    pub anchor_confirmed: Gauge,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        let writable = Gauge::default();
        writable.set(1);
        AuditMetrics {
            queue_depth: Gauge::default(),
            group_commit_records: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_seconds: latency_histogram(),
            writable,
            anchor_confirmed: Gauge::default(),
        }
    }
}

/// Every metric of one node.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    pub audit: AuditMetrics,
    pub peer_up: Family<PeerLabels, Gauge>,
    pub catalog_version: Family<CityLabels, Gauge>,
    pub jwks_refreshes: Family<OutcomeLabels, Counter>,
    pub policy_reloads: Family<OutcomeLabels, Counter>,
    pub rate_limited: Family<CallerLabels, Counter>,
    pub refusals: Family<RefusalLabels, Counter>,
    services: Mutex<HashSet<String>>,
}

fn latency_histogram() -> Histogram {
    // 2^-13 s (122 µs) to 2^4 s (16 s).
    Histogram::new(exponential_buckets(1.0 / 8192.0, 2.0, 18))
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> NodeMetrics {
        let mut registry = Registry::with_prefix("tongban");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Calls that passed this node, by caller city, target city, service and gRPC status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from a call's arrival at this node to its final status",
            latency.clone(),
        );
        let audit = AuditMetrics::default();
        registry.register(
            "audit_queue_depth",
            "Audit records waiting for the writer when it took its last batch",
            audit.queue_depth.clone(),
        );
        registry.register(
            "audit_group_commit_records",
            "Audit records written and synced together",
            audit.group_commit_records.clone(),
        );
        registry.register(
            "audit_commit_duration_seconds",
            "Write and sync of one audit group commit",
            audit.commit_seconds.clone(),
        );
        registry.register(
            "audit_writable",
            "1 while the audit log can be written; 0 makes the node NOT_SERVING",
            audit.writable.clone(),
        );
        registry.register(
            "audit_anchor_confirmed",
            "1 once a peer confirmed this node's audit log against the checkpoints it holds (or the node has no peers)",
            audit.anchor_confirmed.clone(),
        );
        let peer_up = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_up",
            "1 while the catalog stream with the peer city's node is up",
            peer_up.clone(),
        );
        let catalog_version = Family::<CityLabels, Gauge>::default();
        registry.register(
            "catalog_version",
            "Version of each city's service catalog as this node holds it",
            catalog_version.clone(),
        );
        let jwks_refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "jwks_refreshes",
            "Reloads of the caller identity provider's keys",
            jwks_refreshes.clone(),
        );
        let policy_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Reloads of the policy file (failed: the previous policy stays)",
            policy_reloads.clone(),
        );
        let rate_limited = Family::<CallerLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Calls refused because their caller exceeded its rate",
            rate_limited.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Calls this node refused itself, by kind and reason (what the audit's refusal_reason holds)",
            refusals.clone(),
        );
        registry.register(
            "spans_dropped",
            "Finished spans dropped because the export queue was full or the collector failed",
            crate::trace::dropped_spans().clone(),
        );
        NodeMetrics {
            registry,
            requests,
            latency,
            audit,
            peer_up,
            catalog_version,
            jwks_refreshes,
            policy_reloads,
            rate_limited,
            refusals,
            services: Mutex::new(HashSet::new()),
        }
    }

    /// One finished call.
    pub fn observe_call(
        &self,
        side: &str,
        caller_city: &str,
        target_city: &str,
        service: &str,
        code: tonic::Code,
        took: Duration,
    ) {
        let service = self.service_label(service);
        let route = RouteLabels {
            side: side.to_string(),
            caller_city: caller_city.to_string(),
            target_city: target_city.to_string(),
            service,
        };
        self.latency
            .get_or_create(&route)
            .observe(took.as_secs_f64());
        let labels = RequestLabels {
            side: route.side,
            caller_city: route.caller_city,
            target_city: route.target_city,
            service: route.service,
            code: code_name(code).to_string(),
        };
        self.requests.get_or_create(&labels).inc();
    }

    /// A reload of something: `ok` or `failed`.
    pub fn outcome(family: &Family<OutcomeLabels, Counter>, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        family
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn service_label(&self, service: &str) -> String {
        if service.is_empty() {
            return "none".to_string();
        }
        let Ok(mut seen) = self.services.lock() else {
            return "other".to_string();
        };
        if seen.contains(service) {
            return service.to_string();
        }
        if seen.len() < MAX_SERVICES {
            seen.insert(service.to_string());
            return service.to_string();
        }
        "other".to_string()
    }
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bounds_service_labels() {
        let m = NodeMetrics::new();
        for i in 0..(MAX_SERVICES + 10) {
            m.observe_call(
                "home",
                "jinan",
                "qingdao",
                &format!("made.up.Service{i}"),
                tonic::Code::NotFound,
                Duration::from_millis(1),
            );
        }
        let text = m.encode().unwrap_or_default();
        assert!(text.contains("service=\"other\""), "{text}");
        assert!(text.contains("code=\"NOT_FOUND\""));
        assert!(text.contains("tongban_request_duration_seconds_bucket"));
        assert!(text.ends_with("# EOF\n"));
    }
}
