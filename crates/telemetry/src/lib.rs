//! Logging set-up: JSON lines for machines, readable lines for people;
//! OpenTelemetry traces when configured; Prometheus metrics.
//!
//! Architecture invariant: the only place that installs a global subscriber.

pub mod metrics;
pub mod traces;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

pub use traces::{TraceConfig, TraceGuard};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Pretty,
    /// Pretty on a terminal, JSON otherwise.
    Auto,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log.filter {0:?} is not a valid filter: {1}")]
    BadFilter(String, String),
    #[error(transparent)]
    Traces(#[from] traces::TraceSetupError),
}

/// Installs the global subscriber: log lines on stderr and, when
/// `traces` names an endpoint, OpenTelemetry spans over OTLP. `filter` is an
/// `EnvFilter` directive (e.g. `info,dashtam_queue=debug`); `RUST_LOG`
/// overrides it when set. Keep the guard until the process ends.
pub fn init(
    format: LogFormat,
    filter: &str,
    traces: Option<&TraceConfig>,
) -> Result<TraceGuard, TelemetryError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env)
            .map_err(|e| TelemetryError::BadFilter(env.clone(), e.to_string()))?,
        _ => EnvFilter::try_new(filter)
            .map_err(|e| TelemetryError::BadFilter(filter.to_owned(), e.to_string()))?,
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let lines = if json {
        lines
            .json()
            .flatten_event(true)
            // Every enclosing span (request, job) with its fields: a line
            // from deep inside a job still names the job, connection and
            // attempt.
            .with_current_span(false)
            .with_span_list(true)
            .boxed()
    } else {
        lines.compact().boxed()
    };
    let (spans, guard) = match traces.filter(|t| t.enabled()) {
        Some(t) => {
            let (layer, guard) = traces::layer(t)?;
            (Some(layer), guard)
        }
        None => (None, TraceGuard::default()),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .try_init();
    Ok(guard)
}
