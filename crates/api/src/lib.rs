//! The HTTP API (axum): thin handlers over `store` and `queue`.
//!
//! Architecture invariant: no SQL here; every error is an [`ApiError`]
//! rendered as RFC 9457 problem details; a client only ever sees its own
//! resources (another tenant's id is a 404).

pub mod actions;
pub mod auth;
mod dashboard;
pub mod error;
mod extract;
mod idempotency;
pub mod openapi;
pub mod ratelimit;
pub mod serve;
mod v1;

use dashtam_db::Db;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use dashtam_providers::Providers;
use dashtam_queue::Queue;
use dashtam_store::Store;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{Auth, Role, issue_token};
pub use error::ApiError;

/// Per-kind job settings the API applies when enqueueing.
#[derive(Clone, Debug)]
pub struct JobSettings {
    pub sync_max_attempts: i32,
}

/// What handlers share; cloned once or more per request, so one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub store: Store,
    pub queue: Queue,
    pub providers: Providers,
    pub auth: Arc<Auth>,
    pub jobs: JobSettings,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// Live job events (SSE); `None`: not served.
    pub job_events: Option<dashtam_queue::events::JobEvents>,
    /// Per-user limits on writes; `None`: not enforced.
    pub rate_limiter: Option<Arc<ratelimit::RateLimiter>>,
    /// The daemon is stopping: long-lived responses (event streams) end.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Leases on idempotency keys and connection tokens: longer than any
    /// provider call a request makes.
    pub lease: std::time::Duration,
    /// A request body must arrive completely within this.
    pub body_read_timeout: std::time::Duration,
    /// Peers whose `X-Request-Id` is taken as the request's id (proxies
    /// of ours); anyone else's is kept beside our own.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The providers' budgets, for the operators' view.
    pub budgets: BudgetBook,
    /// The last hour's throughput, as last counted (see
    /// `GET /admin/queues/throughput`).
    pub throughput: ThroughputCache,
}

/// The throughput charts' counts, shared by every console polling this
/// daemon: counted at most once per [`ThroughputCache::TTL`], by one
/// request at a time (a million jobs finished within the hour take the
/// count ~0.4 s).
#[derive(Default)]
pub struct ThroughputCache(
    pub(crate) tokio::sync::Mutex<Option<(std::time::Instant, serde_json::Value)>>,
);

impl ThroughputCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(10);
}

/// The providers' budgets as configured, and where to read how they stand
/// (the workers spend them in Redis).
pub struct BudgetBook {
    pub limits: std::collections::BTreeMap<String, BudgetLimit>,
    pub redis: Option<dashtam_buckets::RedisBuckets>,
    pub key_prefix: String,
}

/// One provider's budget, across every daemon.
#[derive(Clone, Copy, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BudgetLimit {
    pub requests_per_sec: f64,
    pub burst: u32,
    /// Requests in flight at once (0: no limit).
    pub concurrency: u32,
}

/// The request's id: echoed in `x-request-id`, in problem bodies and logs,
/// and the correlation id of the audit records it writes.
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

/// The caller's `X-Request-Id`, if it sent a sane one.
fn client_request_id(req: &Request) -> Option<&str> {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
}

/// Gives every request an id: a trusted proxy's `X-Request-Id`, else a new
/// UUIDv7 (a client's own id is logged beside it, never used as ours: it
/// could be anything, including another request's id).
async fn request_context(
    State(trusted): State<Arc<[std::net::IpAddr]>>,
    mut req: Request,
    next: Next,
) -> Response {
    let from_proxy = req
        .extensions()
        .get::<serve::PeerAddr>()
        .is_some_and(|p| trusted.contains(&p.0.ip()));
    let client = client_request_id(&req).map(str::to_owned);
    let id: Arc<str> = match (&client, from_proxy) {
        (Some(c), true) => c.as_str().into(),
        _ => uuid::Uuid::now_v7().to_string().into(),
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        request_id = %id,
        client_request_id = client.as_deref().filter(|_| !from_proxy),
        method = %req.method(),
        path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    // A caller that traces (W3C `traceparent`) sees our spans in its trace.
    dashtam_telemetry::traces::continue_trace(
        &span,
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Every route the API serves, in the request metrics at zero from the
/// first scrape, under the status it answers on success (the first 2xx
/// the description lists).
fn prime_http_metrics(spec: &utoipa::openapi::OpenApi) {
    let m = &dashtam_telemetry::metrics::METRICS;
    for (route, item) in &spec.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            let Some(op) = op else { continue };
            let status = op
                .responses
                .responses
                .keys()
                .find(|s| s.starts_with('2'))
                .map_or("200", String::as_str);
            m.prime_route(route, method, status);
        }
    }
}

/// Counts and times every request by its route template (never the raw
/// path, which holds ids).
async fn http_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    // A closed set: any other method name is `other` (a label per invented
    // method would let anyone grow the registry without bound).
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let span = tracing::Span::current();
    dashtam_telemetry::traces::name_current_span(|| format!("{method} {route}"));
    let resp = next.run(req).await;
    span.record("http.response.status_code", resp.status().as_u16());
    tracing::debug!(
        route = %route,
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request handled"
    );
    let m = &dashtam_telemetry::metrics::METRICS;
    m.http_requests
        .with_label_values(&[route, method, resp.status().as_str()])
        .inc();
    m.http_request_seconds
        .with_label_values(&[route, method])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Prometheus text format (every metric is in `docs/metrics.md`).
#[utoipa::path(
    get, path = "/metrics", tag = "ops", security(()),
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)),
)]
async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        dashtam_telemetry::metrics::METRICS.render(),
    )
        .into_response()
}

/// The process is alive.
#[utoipa::path(
    get, path = "/healthz", tag = "ops", security(()),
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)),
)]
async fn healthz() -> &'static str {
    "ok"
}

/// What `/readyz` checks.
#[derive(Clone)]
struct OpsState {
    pool: Db,
    rate_limiter: Option<Arc<ratelimit::RateLimiter>>,
}

/// What `/readyz` reports when ready.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Readiness {
    /// `ready`.
    status: &'static str,
    /// `ok`.
    database: &'static str,
    /// `current`.
    schema: &'static str,
    /// `ok`, `unavailable` (rate limits fail open) or `not_used`.
    redis: &'static str,
}

/// Ready when the database answers and its schema is this release's.
/// Redis is reported but not required: without it rate limits fail open.
#[utoipa::path(
    get, path = "/readyz", tag = "ops", security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: the database is unreachable or its schema is not current",
         content_type = "application/problem+json", body = error::Problem),
    ),
)]
async fn readyz(State(ops): State<OpsState>) -> Response {
    let redis = match &ops.rate_limiter {
        None => "not_used",
        Some(l) if l.redis_ok().await => "ok",
        Some(_) => "unavailable",
    };
    match dashtam_store::migrate::status(&ops.pool).await {
        Ok(dashtam_store::migrate::SchemaStatus::Current) => axum::Json(Readiness {
            status: "ready",
            database: "ok",
            schema: "current",
            redis,
        })
        .into_response(),
        Ok(other) => {
            ApiError::unavailable(format!("database schema is not current: {other:?}"), None)
                .into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            ApiError::unavailable("database unreachable", Some(5)).into_response()
        }
    }
}

/// What every daemon serves, whatever its roles: `/healthz` (the process
/// is alive), `/readyz` (the database is reachable and its schema current)
/// and `/metrics`. Unauthenticated and cheap.
pub fn ops_router<S: Clone + Send + Sync + 'static>(
    pool: Db,
    rate_limiter: Option<Arc<ratelimit::RateLimiter>>,
) -> Router<S> {
    ops_routes(pool, rate_limiter).split_for_parts().0
}

fn ops_routes<S: Clone + Send + Sync + 'static>(
    pool: Db,
    rate_limiter: Option<Arc<ratelimit::RateLimiter>>,
) -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .with_state(OpsState { pool, rate_limiter })
}

/// Reads a request's whole body within the configured time (a client that
/// trickles its body would otherwise hold a connection and a task for as
/// long as it likes): 408 past it, 413 past the size limit.
async fn read_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, state.body_limit);
    match tokio::time::timeout(state.body_read_timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
            "the request body exceeds the configured limit",
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            "the request body did not arrive in time",
        )
        .into_response(),
    }
}

/// The whole HTTP surface, `/api/v1/openapi.json` describing it.
pub fn router(state: AppState) -> Router {
    let body_limit = state.body_limit;
    let trusted: Arc<[std::net::IpAddr]> = state.trusted_proxies.clone().into();
    let v1 = v1::router()
        .layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotency,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::rate_limit,
        ))
        .routes(routes!(openapi::spec))
        .routes(routes!(openapi::docs));
    let (router, spec) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", v1)
        .merge(ops_routes(
            state.store.pool().clone(),
            state.rate_limiter.clone(),
        ))
        .split_for_parts();
    prime_http_metrics(&spec);
    let json = spec.to_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI description does not serialize");
        String::from("{}")
    });
    router
        .merge(dashboard::router())
        .layer(axum::Extension(openapi::SpecJson(json.into())))
        .route_layer(middleware::from_fn(http_metrics))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn(error::problem_details))
        .layer(middleware::from_fn_with_state(trusted, request_context))
        .with_state(state)
}
