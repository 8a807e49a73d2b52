//! What every adapter's HTTP calls share: the client, metrics, error text.

use std::time::{Duration, Instant};

use dashtam_domain::ports::ProviderError;
use dashtam_telemetry::metrics::METRICS;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("dashtam-worker/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Times one request and records it in the provider metrics.
struct Call {
    provider: &'static str,
    endpoint: &'static str,
    started: Instant,
}

impl Call {
    /// `endpoint` is a route template (never a URL with ids in it).
    fn start(provider: &'static str, endpoint: &'static str) -> Self {
        Self {
            provider,
            endpoint,
            started: Instant::now(),
        }
    }

    /// `status`: the HTTP status code, or `error` when none came back.
    fn record(&self, status: &str) {
        METRICS
            .provider_requests
            .with_label_values(&[self.provider, self.endpoint, status])
            .inc();
        METRICS
            .provider_request_seconds
            .with_label_values(&[self.provider, self.endpoint])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date (the
/// wait until then; none if it has passed). Anything else is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    at.duration_since(std::time::SystemTime::now()).ok()
}

/// reqwest's messages include the URL; keep them short and free of query
/// strings (which may carry account identifiers).
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "");
    }
    if e.is_timeout() {
        format!("timed out ({s})")
    } else {
        s
    }
}

/// What came back from a provider that answered with an error status.
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: bytes::Bytes,
}

/// Sends `req`, recording it under `provider`/`endpoint`. A transport
/// failure is transient; a non-2xx answer is a [`Refusal`] for the adapter
/// to classify.
pub(crate) async fn send(
    provider: &'static str,
    endpoint: &'static str,
    req: reqwest::RequestBuilder,
) -> Result<Result<bytes::Bytes, Refusal>, ProviderError> {
    use tracing::Instrument as _;
    // One span per call (a trace of a sync shows each page fetch).
    let span = tracing::info_span!(
        "provider.call",
        otel.name = %format_args!("{provider} {endpoint}"),
        otel.kind = "client",
        provider,
        endpoint,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    send_in(provider, endpoint, req, &span)
        .instrument(span.clone())
        .await
}

async fn send_in(
    provider: &'static str,
    endpoint: &'static str,
    req: reqwest::RequestBuilder,
    span: &tracing::Span,
) -> Result<Result<bytes::Bytes, Refusal>, ProviderError> {
    let call = Call::start(provider, endpoint);
    let resp = req.send().await.map_err(|e| {
        call.record("error");
        span.record("otel.status_code", "ERROR");
        ProviderError::Transient(format!("{endpoint}: {}", without_url(&e)))
    })?;
    let status = resp.status();
    call.record(status.as_str());
    span.record("http.response.status_code", status.as_u16());
    if !status.is_success() {
        span.record("otel.status_code", "ERROR");
    }
    let retry_after = retry_after(resp.headers());
    let body = resp
        .bytes()
        .await
        .map_err(|e| ProviderError::Transient(format!("{endpoint}: {}", without_url(&e))))?;
    Ok(if status.is_success() {
        Ok(body)
    } else {
        Err(Refusal {
            status,
            retry_after,
            body,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, v.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(retry_after(&header("120")), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&header(" 7 ")), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(90);
        let wait = retry_after(&header(&httpdate::fmt_http_date(later))).unwrap();
        assert!(
            wait > Duration::from_secs(85) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );
        // The obsolete RFC 850 form, as RFC 9110 asks recipients to accept.
        let past = "Sunday, 06-Nov-94 08:49:37 GMT";
        assert_eq!(retry_after(&header(past)), None);
        assert_eq!(retry_after(&header("soon")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
