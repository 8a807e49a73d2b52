//! Per-subject token-bucket rate limits on writes, enforced atomically in
//! Redis by one Lua script (so every API daemon shares the buckets).
//!
//! If Redis is down or slow, requests are let through (fail-open): a rate
//! limiter must not take the API down with it. That is logged at most once
//! per `log_every` and counted in `dashtam_rate_limit_decisions_total{decision="fail_open"}`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashtam_buckets::{RedisBuckets, Take};
use dashtam_telemetry::metrics::METRICS;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

pub use dashtam_buckets::Limit;

#[derive(Clone, Debug)]
pub struct RateLimitSettings {
    pub redis_url: String,
    /// Keys are `<prefix>:rl:<class>:<subject>`.
    pub key_prefix: String,
    /// Enqueueing syncs.
    pub enqueue: Limit,
    /// Every other write (POST, PUT, PATCH, DELETE).
    pub write: Limit,
    /// How long a call to Redis may take before the request fails open.
    pub timeout: Duration,
    /// Fail-open warnings are logged at most this often.
    pub log_every: Duration,
}

/// The decision for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        limit: u32,
        remaining: i64,
        reset_secs: u64,
    },
    Limited {
        limit: u32,
        retry_after_secs: u64,
    },
    /// Redis unavailable: let it through.
    FailOpen,
}

pub struct RateLimiter {
    buckets: RedisBuckets,
    settings: RateLimitSettings,
    last_warning: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(settings: RateLimitSettings) -> Result<Self, redis::RedisError> {
        Ok(Self {
            buckets: RedisBuckets::new(&settings.redis_url, settings.timeout)?,
            settings,
            last_warning: Mutex::new(None),
        })
    }

    fn warn(&self, why: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= self.settings.log_every) {
            *last = Some(Instant::now());
            tracing::warn!(
                error = why,
                "Redis is unavailable; rate limits are not enforced (failing open)"
            );
        }
    }

    /// Is Redis answering? (For `/readyz`, which reports it without
    /// depending on it.)
    pub async fn redis_ok(&self) -> bool {
        self.buckets.ping().await
    }

    /// Takes a token from `subject`'s `class` bucket.
    pub async fn check(&self, class: &str, subject: &str) -> Decision {
        let limit = if class == "enqueue" {
            self.settings.enqueue
        } else {
            self.settings.write
        };
        let key = format!("{}:rl:{class}:{subject}", self.settings.key_prefix);
        let decision = match self.buckets.take(&key, limit).await {
            Take::Allowed { remaining, full_ms } => Decision::Allowed {
                limit: limit.burst,
                remaining,
                reset_secs: full_ms.div_ceil(1000),
            },
            Take::Limited { retry_ms } => Decision::Limited {
                limit: limit.burst,
                retry_after_secs: retry_ms.div_ceil(1000).max(1),
            },
            // No slots asked for: never full.
            Take::Full => Decision::FailOpen,
            Take::Unavailable(why) => {
                self.warn(&why);
                Decision::FailOpen
            }
        };
        let label = match decision {
            Decision::Allowed { .. } => "allowed",
            Decision::Limited { .. } => "limited",
            Decision::FailOpen => "fail_open",
        };
        METRICS
            .rate_limit_decisions
            .with_label_values(&[class, label])
            .inc();
        decision
    }
}

/// The middleware: writes only, keyed by the authenticated subject.
pub async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(limiter) = state.rate_limiter.clone() else {
        return next.run(req).await;
    };
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    // An unauthenticated request is not counted: the route (or its absence)
    // answers it, with a 401, 404 or 405, and no work is done.
    let user = match <Caller as axum::extract::FromRequestParts<AppState>>::from_request_parts(
        &mut parts, &state,
    )
    .await
    {
        Ok(c) => {
            // The handler's extractor reuses it instead of verifying again.
            parts.extensions.insert(c.clone());
            c.user
        }
        Err(_) => return next.run(Request::from_parts(parts, body)).await,
    };
    let class = if parts.uri.path().ends_with("/syncs") {
        "enqueue"
    } else {
        "write"
    };
    let req = Request::from_parts(parts, body);
    match limiter.check(class, user.as_str()).await {
        Decision::Allowed {
            limit,
            remaining,
            reset_secs,
        } => {
            let mut resp = next.run(req).await;
            let h = resp.headers_mut();
            h.insert("ratelimit-limit", HeaderValue::from(limit));
            h.insert("ratelimit-remaining", HeaderValue::from(remaining));
            h.insert("ratelimit-reset", HeaderValue::from(reset_secs));
            resp
        }
        Decision::Limited {
            limit,
            retry_after_secs,
        } => {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!(
                    "you may make {limit} such requests in a burst; try again in {retry_after_secs} s"
                ),
            )
            .into_response();
            let h = resp.headers_mut();
            h.insert("retry-after", HeaderValue::from(retry_after_secs));
            h.insert("ratelimit-limit", HeaderValue::from(limit));
            h.insert("ratelimit-remaining", HeaderValue::from(0));
            h.insert("ratelimit-reset", HeaderValue::from(retry_after_secs));
            resp
        }
        Decision::FailOpen => next.run(req).await,
    }
}
