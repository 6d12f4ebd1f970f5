//! Metrics: the SDK with `/metrics`' pull reader (`floe_gateway::metrics`).
//! Logs go to stderr (`RUST_LOG`, default `info`); traces go over OTLP/HTTP
//! (protobuf) when the standard variables name a collector:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended) or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, with `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME` (default `floe`),
//! `OTEL_RESOURCE_ATTRIBUTES` and the batch processor's `OTEL_BSP_*`.
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn them off.
//!
//! Spans are the `tracing` spans of Floe's own crates (at `debug`, so
//! they are not even made while traces are off): a Kafka
//! request (`kafka.Produce`, `kafka.Fetch`, `kafka.JoinGroup`, ...), the
//! shard's side of it (`shard.append`, `shard.durable`, `shard.read`,
//! `group.*`), transforms' and connectors' batches, and object-store calls
//! (`store.put`, `store.get`, ...).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What must be flushed before the process exits.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    metrics: opentelemetry_sdk::metrics::SdkMeterProvider,
}

/// Whether the environment asks for traces.
fn traces_wanted() -> bool {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return false;
    }
    var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

fn tracer_provider() -> anyhow::Result<SdkTracerProvider> {
    if let Some(p) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .ok()
        .filter(|p| p != "http/protobuf")
    {
        anyhow::bail!("OTLP protocol {p:?} is not supported: use http/protobuf");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("floe");
    }
    Ok(SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build())
}

/// What the trace layer takes, whatever `RUST_LOG` says: Floe's own spans,
/// which are at `debug` so that they cost nothing while no layer wants them
/// (the log layer's filter is `info`), and its events at `info` and above
/// (span events).
fn traced(meta: &tracing::Metadata<'_>) -> bool {
    let max = if meta.is_span() {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    meta.target().starts_with("floe") && *meta.level() <= max
}

/// Installs the global subscriber and meter provider.
pub fn init() -> Telemetry {
    let metrics = floe_gateway::metrics::install();
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")));
    let mut failed = None;
    let traces = if traces_wanted() {
        tracer_provider().map_err(|e| failed = Some(e)).ok()
    } else {
        None
    };
    let spans = traces.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("floe"))
            .with_filter(filter_fn(traced))
    });
    tracing_subscriber::registry().with(logs).with(spans).init();
    if let Some(e) = failed {
        tracing::warn!(error = %e, "traces are off: the OTLP exporter could not be built");
    } else if traces.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry { traces, metrics }
}

impl Telemetry {
    /// Sends the spans still batched.
    pub fn shutdown(self) {
        let _ = self.metrics.shutdown();
        if let Some(p) = self.traces {
            if let Err(e) = p.shutdown() {
                eprintln!("flushing traces: {e}");
            }
        }
    }
}
