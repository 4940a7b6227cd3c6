//! What a node writes about one exchange: an [`Exchange`] collects the facts of a call as the
//! proxy learns them (caller, target, purpose, subject pseudonym, …), through a small typed
//! API, and becomes an `AuditRecord` when the call ends — with the digests and sizes of both
//! message streams, the final status and the timing. [`complete`] makes it durable and
//! handles receipts; building the response is the proxy's job.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tongban_proto::audit::v1::{AuditRecord, Side};
use tongban_telemetry::NodeMetrics;
use tonic::Status;
use tracing::Instrument as _;

use super::receipt;
use super::Auditor;
use crate::error::ApiError as _;
use crate::grpc::{End, SharedTally, Tally};

/// The record of one exchange in the making.
///
/// An exchange dropped before it was completed — the caller cancelled (reset the stream)
/// while the node waited for the upstream or streamed the response — still leaves its
/// record, with status CANCELLED: no exchange passes a node unaudited.
pub struct Exchange {
    record: AuditRecord,
    started: Instant,
    /// The request stream's digest, filled while it passes.
    pub request: SharedTally,
    /// What the end of the exchange does with receipts.
    receipts: Receipts,
    /// Set until the exchange is completed; on drop, a CANCELLED record is written with it.
    auditor: Option<Arc<Auditor>>,
    /// Counts the finished exchange.
    metrics: Arc<NodeMetrics>,
    /// The call's span on this node: gets the exchange's attributes when it ends.
    span: tracing::Span,
    /// Whether the call's trace is exported (its steps get spans of their own).
    sampled: bool,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let Some(auditor) = self.auditor.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!(request_id = %self.record.request_id, "exchange dropped outside a runtime; its record is lost");
            return;
        };
        let pending = Exchange {
            record: std::mem::take(&mut self.record),
            started: self.started,
            request: self.request.clone(),
            receipts: Receipts::None,
            auditor: None,
            metrics: self.metrics.clone(),
            span: self.span.clone(),
            sampled: self.sampled,
        };
        let record = pending.into_record(
            tonic::Code::Cancelled as i32,
            "the caller went away before the exchange completed",
            &Tally::default(),
        );
        rt.spawn(async move {
            if let Err(error) = auditor.record(record).await {
                tracing::error!(%error, "audit append of a cancelled exchange failed");
            }
        });
    }
}

impl Exchange {
    /// A new exchange on this node, in the trace `trace_id` (the caller's, or one the node
    /// started), followed by the call's `span` (an exported one when `sampled`). The
    /// provider side gives a receipt at the end; the home side takes one once
    /// [`Self::routed_to_peer`] says from whom.
    pub fn new(
        auditor: Arc<Auditor>,
        metrics: Arc<NodeMetrics>,
        node_city: &str,
        (request_id, trace_id): (&str, String),
        side: Side,
        (span, sampled): (tracing::Span, bool),
    ) -> Exchange {
        Exchange {
            auditor: Some(auditor),
            metrics,
            sampled,
            span,
            record: AuditRecord {
                request_id: request_id.to_string(),
                side: side as i32,
                node_city: node_city.to_string(),
                started_at_ms: super::now_ms(),
                trace_id,
                ..Default::default()
            },
            started: Instant::now(),
            request: Arc::new(Mutex::new(Tally::default())),
            receipts: match side {
                Side::Provider => Receipts::Give,
                _ => Receipts::None,
            },
        }
    }

    pub fn request_id(&self) -> &str {
        &self.record.request_id
    }

    /// Whether this exchange's trace is recorded (decided at its head).
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The trace this exchange belongs to.
    pub fn trace_id(&self) -> &str {
        &self.record.trace_id
    }

    /// The call's span on this node.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// A span for one step of the call, made by `make` only when the trace is exported.
    pub fn step(&self, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
        if self.sampled {
            make()
        } else {
            tracing::Span::none()
        }
    }

    /// The called service and method.
    pub fn call(&mut self, service: &str, method: &str) {
        self.record.service = service.to_string();
        self.record.method = method.to_string();
    }

    /// What the caller asked for, kept even if routing refuses it.
    pub fn requested(&mut self, city: Option<&str>, org: Option<&str>) {
        self.record.target_city = city.unwrap_or_default().to_string();
        self.record.target_org = org.unwrap_or_default().to_string();
    }

    /// The authenticated caller (home side), or the organisation the peer vouched for.
    pub fn caller(&mut self, city: &str, org: &str) {
        self.record.caller_city = city.to_string();
        self.record.caller_org = org.to_string();
    }

    /// The person behind the call (`kind`: official, citizen or system; a citizen only as a
    /// pseudonym).
    pub fn person(&mut self, kind: &str, person: &str) {
        self.record.caller_kind = kind.to_string();
        self.record.caller_person = person.to_string();
    }

    /// The digest of the caller assertion's claims, as sent (home) or received (provider).
    pub fn assertion(&mut self, digest: [u8; 32]) {
        self.record.assertion_digest = digest.to_vec();
    }

    /// Provider side: the call came from `peer`'s node, for this city.
    pub fn from_peer(&mut self, peer: &str, own_city: &str) {
        self.record.peer_city = peer.to_string();
        self.record.caller_city = peer.to_string();
        self.record.target_city = own_city.to_string();
    }

    /// Purpose, catalog code and the subject's pseudonym (never the clear id).
    pub fn intent(&mut self, purpose: &str, catalog_code: Option<&str>, subject: Option<&str>) {
        self.record.purpose = purpose.to_string();
        self.record.catalog_code = catalog_code.unwrap_or_default().to_string();
        self.record.subject_pseudonym = subject.unwrap_or_default().to_string();
    }

    /// Served by a provider of this city: `org` of `city`.
    pub fn routed_local(&mut self, city: &str, org: &str) {
        self.record.target_city = city.to_string();
        self.record.target_org = org.to_string();
    }

    /// Home side: forwarded to the node of `peer`, whose receipt is verified with `key`.
    pub fn routed_to_peer(
        &mut self,
        peer: &str,
        key: Option<Arc<Vec<u8>>>,
        org: Option<&str>,
        consent: Option<String>,
    ) {
        self.record.side = Side::Home as i32;
        self.record.peer_city = peer.to_string();
        self.record.target_city = peer.to_string();
        self.record.target_org = org.unwrap_or_default().to_string();
        self.record.consent_id = consent.unwrap_or_default();
        self.receipts = Receipts::Take(peer.to_string(), key);
    }

    /// This node refused the call, for `reason` (its `ErrorInfo` reason).
    pub fn refused(&mut self, reason: &str) {
        self.record.refusal_reason = reason.to_string();
    }

    /// The consent the call was checked against (empty: none needed).
    pub fn consent(&mut self, id: String) {
        self.record.consent_id = id;
    }

    /// The finished record.
    pub fn into_record(mut self, code: i32, message: &str, response: &Tally) -> AuditRecord {
        // Completed: no CANCELLED record on drop.
        self.auditor = None;
        let r = &mut self.record;
        r.ended_at_ms = super::now_ms();
        r.duration_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Ok(t) = self.request.lock() {
            r.request_digest = t.digest().to_vec();
            r.request_bytes = t.bytes;
        }
        r.response_digest = response.digest().to_vec();
        r.response_bytes = response.bytes;
        r.grpc_status = code;
        r.grpc_message = message.chars().take(512).collect();
        // By where the call came in and where it was going (a call refused before it was
        // routed counts where it asked to go).
        let side = match Side::try_from(r.side) {
            Ok(Side::Provider) => "provider",
            _ if !r.target_city.is_empty() && r.target_city != r.node_city => "home",
            _ => "local",
        };
        let code = tonic::Code::from_i32(code);
        self.metrics.observe_call(
            side,
            &r.caller_city,
            &r.target_city,
            &r.service,
            code,
            self.started.elapsed(),
        );
        // The span's attributes for the trace: who, what and the outcome, never the subject
        // (only when spans are exported: the call's log lines are written by now).
        if self.sampled {
            record_attributes(&self.span, r, side, code);
        }
        std::mem::take(&mut self.record)
    }
}

/// The exchange's attributes on its `call` span, for the exported trace.
fn record_attributes(s: &tracing::Span, r: &AuditRecord, side: &str, code: tonic::Code) {
    s.record("side", side);
    s.record("tongban.caller_city", r.caller_city.as_str());
    s.record("tongban.caller_org", r.caller_org.as_str());
    s.record("tongban.target_city", r.target_city.as_str());
    s.record("tongban.target_org", r.target_org.as_str());
    s.record("rpc.service", r.service.as_str());
    s.record("rpc.method", r.method.as_str());
    s.record("rpc.grpc.status_code", i64::from(r.grpc_status));
    s.record("tongban.purpose", r.purpose.as_str());
    if !r.catalog_code.is_empty() {
        s.record("tongban.catalog_code", r.catalog_code.as_str());
    }
    if code != tonic::Code::Ok {
        s.record("otel.status_code", "ERROR");
    }
}

/// What the end of an exchange does with receipts.
#[derive(Clone)]
pub enum Receipts {
    None,
    /// Provider side: sign one and add it to the trailers.
    Give,
    /// Home side: keep the providing node's (city, its node key when known).
    Take(String, Option<Arc<Vec<u8>>>),
}

/// The record of an exchange could not be made durable: the exchange fails.
#[derive(Debug, thiserror::Error)]
#[error("the audit record of this exchange could not be written: {0}")]
pub struct AuditUnavailable(String);

impl crate::error::ApiError for AuditUnavailable {
    fn code(&self) -> tonic::Code {
        tonic::Code::Unavailable
    }
    fn reason(&self) -> &'static str {
        "AUDIT_UNAVAILABLE"
    }
}

/// Makes the record durable and handles receipts: the home side verifies and keeps the
/// providing node's; the provider side returns its own signed receipt, to send in the
/// trailers. An error means the record could not be written: the caller must not see a
/// success (no exchange completes unaudited).
pub async fn complete(exchange: Exchange, end: End) -> Result<Option<String>, Status> {
    let commit_span = exchange.step(|| tracing::debug_span!("audit_commit"));
    let Some(auditor) = exchange.auditor.clone() else {
        return Err(AuditUnavailable("the exchange was already completed".into()).status());
    };
    let receipts = exchange.receipts.clone();
    let mut record = exchange.into_record(end.code, &end.message, &end.response);
    if let Receipts::Take(city, key) = &receipts {
        if let Some(token) = end
            .trailers
            .get(receipt::TRAILER)
            .and_then(|v| v.to_str().ok())
        {
            record.receipt = token.to_string();
            record.receipt_verified = key
                .as_ref()
                .and_then(|k| receipt::verify_with(token, city, k, auditor.verified_seals()).ok())
                .is_some_and(|c| {
                    // A provider that refused a call before reading it receipts the empty
                    // stream: "refused without reading", never "read something else".
                    let request_matches = c.rqd == hex::encode(&record.request_digest)
                        || (c.st != 0 && c.rqd == hex::encode(Tally::default().digest()));
                    c.rid == record.request_id
                        && request_matches
                        && c.rsd == hex::encode(&record.response_digest)
                        && c.st == record.grpc_status
                });
            if !record.receipt_verified {
                tracing::warn!(request_id = %record.request_id, peer = %city, "receipt from the providing node does not verify");
            }
        }
    }
    let appended = auditor
        .record(record)
        .instrument(commit_span)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "audit append failed; failing the exchange");
            AuditUnavailable(e.to_string()).status()
        })?;
    Ok(match receipts {
        Receipts::Give => auditor.receipt(&appended),
        _ => None,
    })
}
