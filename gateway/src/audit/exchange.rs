//! What a node writes about one exchange: an [`Exchange`] collects the facts of a call as the
//! proxy learns them (caller, target, purpose, subject pseudonym, …) and becomes an
//! `AuditRecord` when the call ends — with the digests and sizes of both message streams,
//! the final status and the timing.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::HeaderMap;
use tongban_proto::audit::v1::{AuditRecord, Side};
use tonic::Status;

use super::receipt;
use super::Auditor;
use crate::grpc::{self, End, OnEnd, SharedTally, Tally};

/// The record of one exchange in the making.
///
/// An exchange dropped before it was completed — the caller cancelled (reset the stream)
/// while the node waited for the upstream or streamed the response — still leaves its
/// record, with status CANCELLED: no exchange passes a node unaudited.
pub struct Exchange {
    pub record: AuditRecord,
    started: Instant,
    /// The request stream's digest, filled while it passes.
    pub request: SharedTally,
    /// Set until the exchange is completed; on drop, a CANCELLED record is written with it.
    auditor: Option<Arc<Auditor>>,
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
            auditor: None,
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

/// The trace id of a W3C `traceparent` header.
pub fn trace_id(h: &HeaderMap) -> String {
    h.get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .unwrap_or_default()
}

impl Exchange {
    pub fn new(
        auditor: Arc<Auditor>,
        node_city: &str,
        request_id: &str,
        side: Side,
        headers: &HeaderMap,
    ) -> Exchange {
        Exchange {
            auditor: Some(auditor),
            record: AuditRecord {
                request_id: request_id.to_string(),
                side: side as i32,
                node_city: node_city.to_string(),
                started_at_ms: super::now_ms(),
                trace_id: trace_id(headers),
                ..Default::default()
            },
            started: Instant::now(),
            request: Arc::new(Mutex::new(Tally::default())),
        }
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
        std::mem::take(&mut self.record)
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

/// Makes the record durable, and handles the receipt; an error status replaces the response
/// status when the record cannot be written (no exchange completes unaudited).
pub async fn complete(
    auditor: Arc<Auditor>,
    exchange: Exchange,
    end: End,
    receipts: Receipts,
) -> Result<HeaderMap, Status> {
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
                .and_then(|k| receipt::verify(token, city, k).ok())
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
    let appended = auditor.record(record).await.map_err(|e| {
        tracing::error!(error = %e, "audit append failed; failing the exchange");
        Status::unavailable(format!(
            "the audit record of this exchange could not be written: {e}"
        ))
    })?;
    let mut extra = HeaderMap::new();
    if matches!(receipts, Receipts::Give) {
        if let Some(r) = auditor.receipt(&appended) {
            if let Ok(v) = http::HeaderValue::from_str(&r) {
                extra.insert(receipt::TRAILER, v);
            }
        }
    }
    Ok(extra)
}

/// The response-guard hook that completes `exchange`.
pub fn on_end(auditor: Arc<Auditor>, exchange: Exchange, receipts: Receipts) -> OnEnd {
    Box::new(move |end| Box::pin(complete(auditor, exchange, end, receipts)))
}

/// Completes an exchange that produced no upstream response (a refusal or a failure) and
/// returns the trailers-only response to send.
pub async fn refuse(
    auditor: Arc<Auditor>,
    exchange: Exchange,
    status: Status,
    receipts: Receipts,
) -> http::Response<tonic::body::Body> {
    let request_id = exchange.record.request_id.clone();
    let end = End {
        code: status.code() as i32,
        message: status.message().to_string(),
        trailers: HeaderMap::new(),
        response: Tally::default(),
    };
    let mut resp = grpc::status_response(status, &request_id);
    match complete(auditor, exchange, end, receipts).await {
        Ok(extra) => resp.headers_mut().extend(extra),
        Err(audit_failed) => {
            tracing::error!(request_id, "refusal could not be audited");
            let _ = audit_failed;
        }
    }
    resp
}
