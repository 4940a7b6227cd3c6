//! Traces: one trace per exchange across both cities (W3C Trace Context), exported over
//! OTLP/gRPC from a bounded queue that never blocks a call.
//!
//! A node keeps the trace id of every exchange in its audit record whether or not traces are
//! exported: [`continue_trace`] takes it from the caller's `traceparent`, or makes one, and
//! [`inject`] passes it to the next hop. With export on (`[telemetry]`), the call's spans are
//! OpenTelemetry spans (through `tracing-opentelemetry`): the caller's `traceparent` becomes
//! the parent of the node's `call` span, and the next hop gets the context of the span that
//! forwards to it, so the providing node's spans are children of the home node's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// `[telemetry]` of a node's config: where and how much to export.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The OTLP/gRPC endpoint of a collector, `http://host:4317`.
    pub endpoint: String,
    /// Share of new traces recorded (0.0–1.0); a call that arrives with a sampled or
    /// unsampled `traceparent` follows its parent's decision.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans (`tongban-<city>` unless set).
    pub service_name: String,
    /// Finished spans waiting for export; beyond this they are dropped and counted.
    pub queue_spans: usize,
    /// Longest one export may take (an unreachable collector costs at most this, off the
    /// data path).
    pub export_timeout: Duration,
}

impl TraceSettings {
    pub const DEFAULT_QUEUE_SPANS: usize = 4096;
    pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
}

/// Spans sent to the collector in one export.
const MAX_BATCH: usize = 512;
/// How long a started batch waits for more spans before it is sent.
const BATCH_DELAY: Duration = Duration::from_millis(500);

/// Whether this process exports spans (set once, by [`crate::init`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);
/// The share of new traces recorded (`f64` bits; set once, by [`crate::init`]).
static RATIO: AtomicU64 = AtomicU64::new(0);

pub(crate) fn set_exporting(on: bool, sample_ratio: f64) {
    RATIO.store(sample_ratio.to_bits(), Ordering::Relaxed);
    EXPORTING.store(on, Ordering::Relaxed);
}

/// The target of a call's span when its trace is not recorded: the logs see it (every line
/// of the call carries its request and trace ids), the span exporter never does, so an
/// unsampled call pays for no OpenTelemetry span, attribute or export. Under the gateway's
/// crate name, so that a log directive for the gateway covers it.
pub const LOG_ONLY: &str = "tongban_gateway::call";

/// The name of a call's root span on a node; [`CallSampler`] records every one that
/// [`head_sampled`] let through.
pub const CALL_SPAN: &str = "call";

/// Whether the call arriving with `headers` is recorded, decided before any span is made
/// (head sampling): a valid `traceparent` decides by its sampled flag (parent-based);
/// otherwise a share [`TraceSettings::sample_ratio`] of new traces is. Never with export
/// off.
pub fn head_sampled(headers: &HeaderMap) -> bool {
    if !exporting() {
        return false;
    }
    match traceparent(headers) {
        Some((_, _, flags)) => flags & 1 == 1,
        None => fastrand::f64() < f64::from_bits(RATIO.load(Ordering::Relaxed)),
    }
}

/// The exporter's sampler: a call's root span (made only when [`head_sampled`] said so) is
/// recorded; every other span follows its parent, or the ratio when it starts a trace.
#[derive(Debug, Clone)]
pub(crate) struct CallSampler {
    pub(crate) others: opentelemetry_sdk::trace::Sampler,
}

impl opentelemetry_sdk::trace::ShouldSample for CallSampler {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        kind: &opentelemetry::trace::SpanKind,
        attributes: &[opentelemetry::KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        let root = !parent.is_some_and(|cx| cx.span().span_context().is_valid());
        let sampler = if name == CALL_SPAN && root {
            &opentelemetry_sdk::trace::Sampler::AlwaysOn
        } else {
            &self.others
        };
        sampler.should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

/// Whether spans of this process are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Finished spans dropped because the export queue was full (or already closed).
pub fn dropped_spans() -> &'static Counter {
    static DROPPED: std::sync::OnceLock<Counter> = std::sync::OnceLock::new();
    DROPPED.get_or_init(Counter::default)
}

/// Makes `span` (a call's root span on this node, not yet entered) continue the caller's
/// trace, and returns the trace id to record: the caller's (from a valid `traceparent`), the
/// exported span's, or a new one. The id is also recorded as the span's `trace_id` field, so
/// every log line of the call carries it. `sampled` is [`head_sampled`]'s answer: only then
/// is `span` an OpenTelemetry span.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap, sampled: bool) -> String {
    let mut id = None;
    if sampled && exporting() {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        if span.set_parent(parent).is_ok() {
            let tid = span.context().span().span_context().trace_id();
            if tid != TraceId::INVALID {
                id = Some(tid.to_string());
            }
        }
    }
    let id = id
        .or_else(|| parse_traceparent(headers).map(|(t, _)| t.to_string()))
        .unwrap_or_else(|| TraceId::from_bytes(random_bytes()).to_string());
    span.record("trace_id", id.as_str());
    id
}

/// Sets the trace context the next hop gets. In a recorded trace (`sampled`), the context of
/// `span` (the span that sends the request); otherwise the caller's `traceparent` goes on
/// unchanged, or, if it had none, one carrying `trace_id` (unsampled: nothing upstream of
/// here recorded it).
pub fn inject(span: &tracing::Span, sampled: bool, trace_id: &str, headers: &mut HeaderMap) {
    if sampled && exporting() {
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
            return;
        }
    }
    if parse_traceparent(headers).is_some_and(|(t, _)| t.to_string() == trace_id) {
        return;
    }
    let span_id = SpanId::from_bytes(random_bytes());
    let value = format!("00-{trace_id}-{span_id}-00");
    if let Ok(mut v) = HeaderValue::from_str(&value) {
        // New on every call: never indexed by HPACK (it would only push repeating values
        // out of the connection's table).
        v.set_sensitive(true);
        headers.insert("traceparent", v);
        headers.remove("tracestate");
    }
}

/// The trace and parent span ids of a valid W3C `traceparent` (version 00 layout; all-zero
/// ids are invalid).
pub fn parse_traceparent(headers: &HeaderMap) -> Option<(TraceId, SpanId)> {
    traceparent(headers).map(|(t, s, _)| (t, s))
}

/// [`parse_traceparent`] with the trace flags.
fn traceparent(headers: &HeaderMap) -> Option<(TraceId, SpanId, u8)> {
    let v = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    let t = TraceId::from_hex(trace).ok()?;
    let s = SpanId::from_hex(parent).ok()?;
    let f = u8::from_str_radix(flags, 16).ok()?;
    (t != TraceId::INVALID && s != SpanId::INVALID).then_some((t, s, f))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fastrand::fill(&mut b);
    b
}

/// A random (v4) UUID for ids that must be unique, not secret — request ids, assertion
/// ids — from a per-thread generator seeded by the OS once, instead of a system call per
/// id on the path of every call.
pub fn unique_id() -> String {
    uuid::Builder::from_random_bytes(random_bytes::<16>())
        .into_uuid()
        .to_string()
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Hands finished, sampled spans to the export task through a bounded queue: `on_end` never
/// waits; a full queue drops the span and counts it ([`dropped_spans`]).
#[derive(Debug)]
pub(crate) struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(span).is_err() {
            dropped_spans().inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The queue and the task that empties it into `exporter`, in batches of up to
/// [`MAX_BATCH`] spans or every [`BATCH_DELAY`]. Returns the processor for the tracer
/// provider; the task ends (after a last export) when `stop` fires or the queue closes.
pub(crate) fn start_export(
    mut exporter: opentelemetry_otlp::SpanExporter,
    resource: &opentelemetry_sdk::Resource,
    settings: &TraceSettings,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (QueueProcessor, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<SpanData>(settings.queue_spans.max(1));
    exporter.set_resource(resource);
    let timeout = settings.export_timeout;
    let endpoint = settings.endpoint.clone();
    let task = tokio::spawn(async move {
        let mut failing = false;
        loop {
            let first = tokio::select! {
                s = rx.recv() => s,
                _ = &mut stop => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            let until = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    _ => break,
                }
            }
            failing = export(&exporter, batch, timeout, &endpoint, failing).await;
        }
        // Stopping: what is still queued gets one last try.
        rx.close();
        let mut rest = Vec::new();
        while let Ok(s) = rx.try_recv() {
            rest.push(s);
        }
        if !rest.is_empty() {
            export(&exporter, rest, timeout, &endpoint, failing).await;
        }
    });
    (QueueProcessor { tx }, task)
}

/// One export; returns whether it failed. A failing collector is logged when it starts and
/// stops failing, not at every batch; the spans of a failed export are counted as dropped.
async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    timeout: Duration,
    endpoint: &str,
    was_failing: bool,
) -> bool {
    let n = batch.len() as u64;
    let outcome = match tokio::time::timeout(timeout, exporter.export(batch)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    match outcome {
        Ok(()) => {
            if was_failing {
                tracing::info!(%endpoint, "span export recovered");
            }
            false
        }
        Err(error) => {
            dropped_spans().inc_by(n);
            if !was_failing {
                tracing::warn!(%endpoint, %error, spans = n, "span export failed; spans are dropped until the collector answers");
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(tp: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_str(tp).unwrap_or(HeaderValue::from_static("")),
        );
        h
    }

    #[test]
    fn traceparent_parsing() {
        let ok = with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let (t, s) = parse_traceparent(&ok).unwrap_or((TraceId::INVALID, SpanId::INVALID));
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "not a traceparent",
        ] {
            assert!(parse_traceparent(&with(bad)).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_export_the_trace_id_is_kept_or_made_and_passed_on() {
        let span = tracing::Span::none();
        let caller = with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let id = continue_trace(&span, &caller, false);
        assert_eq!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut next = caller.clone();
        inject(&span, false, &id, &mut next);
        assert_eq!(next.get("traceparent"), caller.get("traceparent"));

        let made = continue_trace(&span, &HeaderMap::new(), false);
        assert_eq!(made.len(), 32);
        assert_ne!(made, "0".repeat(32));
        let mut next = HeaderMap::new();
        inject(&span, false, &made, &mut next);
        let (t, _) = parse_traceparent(&next).unwrap_or((TraceId::INVALID, SpanId::INVALID));
        assert_eq!(t.to_string(), made);
    }
}
