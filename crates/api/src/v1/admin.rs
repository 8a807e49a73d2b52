//! Operator endpoints: queue statistics, pause/resume, and job retry and
//! discard. Every action is audited in the transaction that performs it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use dashtam_domain::JobId;
use dashtam_domain::audit::AuditAction;
use dashtam_queue::ops;

use super::jobs::JobView;
use super::shared::action;
use super::views::QueueStatsOut;
use crate::actions::{self, QueueName};
use crate::auth::{Caller, Operator};
use crate::error::ApiError;
use crate::extract::{PathId, PathParam};
use crate::idempotency::IdempotencyKey;
use crate::openapi::Problems;
use crate::{AppState, RequestId};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(queues))
        .routes(routes!(providers))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(retry))
        .routes(routes!(discard))
}

impl PathParam for QueueName {
    const NAME: &'static str = "queue";
    const DESCRIPTION: &'static str = "The queue's name (`sync`, `token_refresh`, …).";
    const IS: &'static str = "a queue name (1 to 64 letters, digits, _ or -)";

    fn schema() -> utoipa::openapi::schema::ObjectBuilder {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Za-z0-9_-]{1,64}$"))
    }
}

#[derive(serde::Serialize, ToSchema)]
struct QueueList {
    data: Vec<QueueStatsOut>,
}

/// Jobs per queue and state, and which queues are paused.
#[utoipa::path(
    get, path = "/admin/queues", tag = "admin",
    responses((status = 200, body = QueueList), Problems),
)]
async fn queues(State(state): State<AppState>, _: Operator) -> Result<Json<QueueList>, ApiError> {
    Ok(Json(QueueList {
        data: ops::stats(state.queue.pool())
            .await?
            .into_iter()
            .map(QueueStatsOut::from)
            .collect(),
    }))
}

/// One provider as the workers see it.
#[derive(serde::Serialize, ToSchema)]
struct ProviderView {
    provider: &'static str,
    /// An adapter is configured for it.
    configured: bool,
    /// `closed` (calls go through), `open` (none do until `probe_at`) or
    /// `half_open` (a few probe calls decide).
    breaker: String,
    changed_at: Option<chrono::DateTime<chrono::Utc>>,
    probe_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Consecutive openings (each doubles the cool-down).
    trips: i32,
    /// The provider asked every caller to wait until then (a 429).
    paused_until: Option<chrono::DateTime<chrono::Utc>>,
    reason: Option<String>,
    /// Pending jobs snoozed until the provider is back (or its budget has
    /// room again).
    snoozed_jobs: i64,
    /// Its budget (none: calls are not limited).
    budget: Option<crate::BudgetLimit>,
    /// Calls let through per second over the last ten seconds, and calls in
    /// flight now, across every daemon (none: no budget, or Redis cannot
    /// say).
    current_rate: Option<f64>,
    in_flight: Option<u64>,
}

#[derive(serde::Serialize, ToSchema)]
struct ProviderList {
    data: Vec<ProviderView>,
}

/// Each provider's circuit breaker, pause, budget and snoozed jobs.
#[utoipa::path(
    get, path = "/admin/providers", tag = "admin",
    responses((status = 200, body = ProviderList), Problems),
)]
async fn providers(
    State(state): State<AppState>,
    _: Operator,
) -> Result<Json<ProviderList>, ApiError> {
    let health = state.store.provider_health().await?;
    let snoozed = ops::snoozed_counts(state.queue.pool()).await?;
    let book = &state.budgets;
    let now_sec = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    let mut usage = std::collections::HashMap::new();
    if let Some(redis) = &book.redis {
        for p in book.limits.keys() {
            let keys = dashtam_buckets::BudgetKeys::new(&book.key_prefix, p);
            match redis.usage(&keys, now_sec).await {
                Ok(u) => {
                    usage.insert(p.clone(), u);
                }
                Err(e) => tracing::warn!(error = %e, provider = %p, "could not read the budget"),
            }
        }
    }
    let data = dashtam_domain::model::ProviderKind::ALL
        .into_iter()
        .map(|p| {
            let h = health.iter().find(|h| h.provider == p.as_str());
            let u = usage.get(p.as_str());
            ProviderView {
                provider: p.as_str(),
                configured: state.providers.source(p).is_some(),
                breaker: h.map_or_else(|| "closed".to_owned(), |h| h.breaker.clone()),
                changed_at: h.map(|h| h.changed_at),
                probe_at: h.and_then(|h| h.probe_at),
                trips: h.map_or(0, |h| h.trips),
                paused_until: h.and_then(|h| h.paused_until),
                reason: h.and_then(|h| h.reason.clone()),
                snoozed_jobs: snoozed
                    .iter()
                    .find(|(k, _)| k == p.as_str())
                    .map_or(0, |(_, n)| *n),
                budget: book.limits.get(p.as_str()).copied(),
                current_rate: u.map(|u| u.per_sec),
                in_flight: u.map(|u| u.in_flight),
            }
        })
        .collect();
    Ok(Json(ProviderList { data }))
}

/// Stops workers claiming from the queue; running jobs carry on.
#[utoipa::path(
    post, path = "/admin/queues/{queue}/pause", tag = "admin", params(PathId<QueueName>, IdempotencyKey),
    responses((status = 204, description = "Paused"), Problems),
)]
async fn pause(
    State(state): State<AppState>,
    Operator(caller): Operator,
    axum::Extension(rid): axum::Extension<RequestId>,
    PathId(queue): PathId<QueueName>,
) -> Result<StatusCode, ApiError> {
    set_paused(&state, &caller, &rid, queue, true).await
}

/// Lets workers claim from the queue again.
#[utoipa::path(
    post, path = "/admin/queues/{queue}/resume", tag = "admin", params(PathId<QueueName>, IdempotencyKey),
    responses((status = 204, description = "Resumed"), Problems),
)]
async fn resume(
    State(state): State<AppState>,
    Operator(caller): Operator,
    axum::Extension(rid): axum::Extension<RequestId>,
    PathId(queue): PathId<QueueName>,
) -> Result<StatusCode, ApiError> {
    set_paused(&state, &caller, &rid, queue, false).await
}

async fn set_paused(
    state: &AppState,
    caller: &Caller,
    rid: &RequestId,
    queue: QueueName,
    paused: bool,
) -> Result<StatusCode, ApiError> {
    let audit = if paused {
        AuditAction::QueuePaused
    } else {
        AuditAction::QueueResumed
    };
    let entry = action(audit, caller, "queue", queue.as_str().to_owned(), rid);
    actions::set_queue_paused(
        state.queue.pool(),
        &queue,
        paused,
        caller.user.as_str(),
        &entry,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Why a job action did not apply: the job is gone, or in the wrong state.
async fn refusal(state: &AppState, id: JobId, why: &str) -> ApiError {
    match state.queue.get(id.0).await {
        Ok(None) => ApiError::not_found(format!("job {id} not found")),
        Ok(Some(j)) => ApiError::conflict(format!("job {id} is {}; {why}", j.state)),
        Err(e) => e.into(),
    }
}

/// Runs a dead (failed) or cancelled job again.
#[utoipa::path(
    post, path = "/admin/jobs/{job_id}/retry", tag = "admin", params(PathId<JobId>, IdempotencyKey),
    responses((status = 200, description = "Available again", body = JobView), Problems),
)]
async fn retry(
    State(state): State<AppState>,
    Operator(caller): Operator,
    axum::Extension(rid): axum::Extension<RequestId>,
    PathId(id): PathId<JobId>,
) -> Result<Json<JobView>, ApiError> {
    let entry = action(
        AuditAction::JobRetried,
        &caller,
        "job",
        id.to_string(),
        &rid,
    );
    let job = match actions::retry_job(state.queue.pool(), id.0, &entry).await? {
        ops::Retry::Retried(job) => *job,
        ops::Retry::NotRetryable => {
            return Err(refusal(&state, id, "only failed or cancelled jobs can be retried").await);
        }
        ops::Retry::KeyHeldBy(holder) => {
            let who = holder.map_or_else(|| "another job".to_owned(), |h| format!("job {h}"));
            return Err(ApiError::conflict(format!(
                "{who} already holds this job's unique key (it is pending or running); \
                 that job does the same work, so follow it instead"
            )));
        }
    };
    Ok(Json(job.into()))
}

/// Deletes a finished job.
#[utoipa::path(
    delete, path = "/admin/jobs/{job_id}", tag = "admin", params(PathId<JobId>),
    responses((status = 204, description = "Discarded"), Problems),
)]
async fn discard(
    State(state): State<AppState>,
    Operator(caller): Operator,
    axum::Extension(rid): axum::Extension<RequestId>,
    PathId(id): PathId<JobId>,
) -> Result<StatusCode, ApiError> {
    let entry = action(
        AuditAction::JobDiscarded,
        &caller,
        "job",
        id.to_string(),
        &rid,
    );
    if !actions::discard_job(state.queue.pool(), id.0, &entry).await? {
        return Err(refusal(&state, id, "cancel it before discarding it").await);
    }
    Ok(StatusCode::NO_CONTENT)
}
