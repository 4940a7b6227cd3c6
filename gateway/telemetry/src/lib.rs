//! What a node tells its operators, with the tools they already run:
//! - **logs** on stderr, for people (`text`) or one JSON object per line (`json`), every line
//!   of a call carrying its `request_id` and `trace_id` (fields of the call's span);
//! - **traces** ([`trace`]): OpenTelemetry spans exported over OTLP/gRPC when the node's
//!   config has a `[telemetry]` section, one trace per exchange across both cities;
//! - **metrics** ([`metrics`]): a Prometheus registry per node, served by the node's admin
//!   listener.
//!
//! Only spans go to the collector, never log events: what a span carries is chosen field by
//! field (cities, organisation, service, method, status, request id), so neither a token
//! nor a clear resident id can reach it.

pub mod metrics;
pub mod trace;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

pub use metrics::NodeMetrics;
pub use trace::TraceSettings;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.endpoint `{endpoint}`: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps span export running; [`Telemetry::shutdown`] sends what is queued.
pub struct Telemetry {
    export: Option<Export>,
}

struct Export {
    provider: SdkTracerProvider,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Telemetry {
    /// Stops exporting: queued spans get one last export (bounded by the export timeout).
    pub async fn shutdown(self) {
        if let Some(e) = self.export {
            // Ends every span still open in the provider; then the queue is emptied.
            let _ = e.provider.shutdown();
            let _ = e.stop.send(());
            let _ = e.task.await;
        }
    }
}

/// Installs the process's subscriber: logs per `filter` (env-filter syntax; `RUST_LOG`
/// overrides it) and `format`, and, with `traces`, span export. Must run inside a Tokio
/// runtime when `traces` is given (the export task and the gRPC channel live on it).
pub fn init(
    filter: &str,
    format: LogFormat,
    traces: Option<&TraceSettings>,
) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => fmt.with_ansi(ansi).with_filter(filter).boxed(),
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    let Some(settings) = traces else {
        tracing_subscriber::registry()
            .with(logs)
            .try_init()
            .map_err(|_| TelemetryError::AlreadyInstalled)?;
        return Ok(Telemetry { export: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.export_timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: settings.endpoint.clone(),
            message: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let (processor, task) = trace::start_export(exporter, &resource, settings, stopped);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(trace::CallSampler {
            others: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))),
        })
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("tongban");
    // Spans only (no log events), of the node's own crates, down to the steps of a call; not
    // the log-only span of a call whose trace is not recorded.
    let spans = tracing_subscriber::filter::filter_fn(|m| {
        m.is_span() && m.target().starts_with("tongban") && m.target() != trace::LOG_ONLY
    });
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_filter(spans);
    tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    trace::set_exporting(true, settings.sample_ratio);
    Ok(Telemetry {
        export: Some(Export {
            provider,
            stop,
            task,
        }),
    })
}
