//! Logging set-up: JSON lines for machines, readable lines for people.
//!
//! Architecture invariant: the only place that installs a global subscriber.

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

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
}

/// Installs the global subscriber. `filter` is an `EnvFilter` directive
/// (e.g. `info,dashtam_queue=debug`); `RUST_LOG` overrides it when set.
pub fn init(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            // Every enclosing span (request, job) with its fields: a line
            // from deep inside a job still names the job, connection and
            // attempt.
            .with_current_span(false)
            .with_span_list(true)
            .try_init()
    } else {
        builder.compact().try_init()
    };
    Ok(())
}
