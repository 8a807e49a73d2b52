//! OpenTelemetry traces over OTLP/HTTP (protobuf), off unless an endpoint
//! is configured.
//!
//! The spans are `tracing` spans (a request, a job run, a provider call, a
//! commit), exported by `tracing-opentelemetry`. A job's trace continues the
//! one that enqueued it: the enqueuing span's W3C `traceparent` is stored
//! with the job ([`current_traceparent`]) and the job's span takes it as its
//! parent, with the time it waited in the queue as a span of its own
//! ([`continue_job_trace`]); a request continues its caller's trace
//! ([`continue_trace`]). Without an exporter all of this costs a
//! thread-local lookup: there is no context to carry.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where and how traces go.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans
    /// are posted to `<endpoint>/v1/traces`. Empty: no traces.
    #[serde(default)]
    pub otlp_endpoint: String,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Fraction of new traces kept, 0 to 1 (a job's trace follows its
    /// request's decision).
    pub sample_ratio: f64,
    /// How long one export may take.
    pub export_timeout_ms: u64,
}

impl TraceConfig {
    pub fn enabled(&self) -> bool {
        !self.otlp_endpoint.trim().is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("tracing.otlp_endpoint: could not set up the OTLP exporter: {0}")]
pub struct TraceSetupError(String);

/// Keeps the exporter alive; [`TraceGuard::shutdown`] sends what is left.
#[derive(Default)]
pub struct TraceGuard(Option<SdkTracerProvider>);

impl TraceGuard {
    /// Exports the spans still buffered (at most the export timeout).
    pub fn shutdown(self) {
        if let Some(p) = self.0
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

/// The exporter and the `tracing` layer that feeds it.
pub(crate) fn layer<S>(
    config: &TraceConfig,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        TraceGuard,
    ),
    TraceSetupError,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let endpoint = format!("{}/v1/traces", config.otlp_endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_millis(config.export_timeout_ms))
        .build()
        .map_err(|e| TraceSetupError(e.to_string()))?;
    let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(config.sample_ratio.clamp(0.0, 1.0)),
    ));
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("dashtam");
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok((
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_error_records_to_exceptions(false),
        TraceGuard(Some(provider)),
    ))
}

/// The current span's trace as a W3C `traceparent`, to store with a job
/// enqueued under it; `None` when no trace is being recorded.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

fn extract(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of the trace `traceparent` names (the request that
/// enqueued a job, or a caller's own `traceparent` header). Nothing happens
/// for a malformed value or when traces are off.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    let cx = extract(tp);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Renames the current span in its trace (an HTTP request's span takes its
/// route's name once routing found it: `GET /api/v1/jobs/{job_id}`). The
/// name is only made when a trace is being recorded.
pub fn name_current_span(name: impl FnOnce() -> String) {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    if span.span_context().is_valid() {
        span.update_name(name());
    }
}

/// A job's run continues the trace of what enqueued it (`traceparent`, as
/// stored with the job): `span` becomes its child, after a `queue.wait`
/// span from when the job fell due to when a worker claimed it. Nothing
/// happens without a (well-formed) `traceparent`.
pub fn continue_job_trace(
    span: &tracing::Span,
    traceparent: Option<&str>,
    due: chrono::DateTime<chrono::Utc>,
    claimed: chrono::DateTime<chrono::Utc>,
    queue: &str,
    attempt: i32,
) {
    let Some(tp) = traceparent else { return };
    let cx = extract(tp);
    if !cx.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer("dashtam");
    let mut wait = tracer
        .span_builder("queue.wait")
        .with_start_time(std::time::SystemTime::from(due))
        .with_attributes([
            opentelemetry::KeyValue::new("queue", queue.to_owned()),
            opentelemetry::KeyValue::new("attempt", i64::from(attempt)),
        ])
        .start_with_context(&tracer, &cx);
    wait.end_with_timestamp(std::time::SystemTime::from(claimed.max(due)));
    let _ = span.set_parent(cx);
}
