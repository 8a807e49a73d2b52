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
use dashtam_telemetry::metrics::METRICS;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex as AsyncMutex;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// A bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Clone, Copy, Debug)]
pub struct Limit {
    pub per_sec: f64,
    pub burst: u32,
}

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

/// Takes one token; returns {allowed, tokens left, ms until one is back,
/// ms until the bucket is full}. Time comes from the Redis server, so every
/// API daemon agrees on it.
const SCRIPT: &str = r"
local capacity = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2]) / 1000
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * per_ms)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
local full_ms = math.ceil((capacity - tokens) / per_ms)
redis.call('PEXPIRE', KEYS[1], math.max(full_ms, 1000))
local retry_ms = 0
if allowed == 0 then retry_ms = math.ceil((1 - tokens) / per_ms) end
return {allowed, math.floor(tokens), retry_ms, full_ms}
";

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
    client: redis::Client,
    script: redis::Script,
    settings: RateLimitSettings,
    /// The shared connection, and when connecting last failed (to avoid
    /// trying on every request while Redis is down).
    conn: AsyncMutex<(Option<MultiplexedConnection>, Option<Instant>)>,
    last_warning: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(settings: RateLimitSettings) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(settings.redis_url.as_str())?,
            script: redis::Script::new(SCRIPT),
            settings,
            conn: AsyncMutex::new((None, None)),
            last_warning: Mutex::new(None),
        })
    }

    async fn connection(&self) -> Option<MultiplexedConnection> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = &guard.0 {
            return Some(c.clone());
        }
        if guard
            .1
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        let connect = self.client.get_multiplexed_async_connection();
        match tokio::time::timeout(self.settings.timeout * 4, connect).await {
            Ok(Ok(c)) => {
                *guard = (Some(c.clone()), None);
                Some(c)
            }
            Ok(Err(e)) => {
                self.warn(&e.to_string());
                guard.1 = Some(Instant::now());
                None
            }
            Err(_) => {
                self.warn("connecting timed out");
                guard.1 = Some(Instant::now());
                None
            }
        }
    }

    async fn forget_connection(&self) {
        *self.conn.lock().await = (None, Some(Instant::now()));
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
        let Some(mut c) = self.connection().await else {
            return false;
        };
        let ping = redis::cmd("PING");
        let answer = ping.query_async::<String>(&mut c);
        matches!(
            tokio::time::timeout(self.settings.timeout * 4, answer).await,
            Ok(Ok(_))
        )
    }

    /// Takes a token from `subject`'s `class` bucket.
    pub async fn check(&self, class: &str, subject: &str) -> Decision {
        let limit = if class == "enqueue" {
            self.settings.enqueue
        } else {
            self.settings.write
        };
        let decision = match self.connection().await {
            None => Decision::FailOpen,
            Some(mut c) => {
                let key = format!("{}:rl:{class}:{subject}", self.settings.key_prefix);
                let mut invocation = self.script.key(key);
                invocation.arg(limit.burst).arg(limit.per_sec);
                let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut c);
                match tokio::time::timeout(self.settings.timeout, call).await {
                    Ok(Ok((1, remaining, _, full_ms))) => Decision::Allowed {
                        limit: limit.burst,
                        remaining,
                        reset_secs: u64::try_from(full_ms).unwrap_or(0).div_ceil(1000),
                    },
                    Ok(Ok((_, _, retry_ms, _))) => Decision::Limited {
                        limit: limit.burst,
                        retry_after_secs: u64::try_from(retry_ms)
                            .unwrap_or(0)
                            .div_ceil(1000)
                            .max(1),
                    },
                    Ok(Err(e)) => {
                        self.warn(&e.to_string());
                        self.forget_connection().await;
                        Decision::FailOpen
                    }
                    Err(_) => {
                        self.warn("the rate-limit script timed out");
                        Decision::FailOpen
                    }
                }
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
