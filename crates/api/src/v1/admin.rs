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
        .routes(routes!(throughput))
        .routes(routes!(job_audit))
        .routes(routes!(connections))
}

/// Jobs finished in one minute of one queue.
#[derive(serde::Serialize, ToSchema)]
struct MinuteOut {
    queue: String,
    minute: chrono::DateTime<chrono::Utc>,
    succeeded: i64,
    /// Failed for good, or cancelled.
    failed: i64,
}

#[derive(serde::Serialize, ToSchema)]
struct ThroughputList {
    /// From when (an hour ago).
    since: chrono::DateTime<chrono::Utc>,
    /// Per queue and minute with at least one finished job, oldest first.
    data: Vec<MinuteOut>,
}

/// Jobs finished per queue and minute over the last hour (of those still
/// kept: retention may have removed some), counted at most every 10 s.
#[utoipa::path(
    get, path = "/admin/queues/throughput", tag = "admin",
    responses((status = 200, body = ThroughputList), Problems),
)]
async fn throughput(
    State(state): State<AppState>,
    _: Operator,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut cached = state.throughput.0.lock().await;
    if let Some((at, value)) = cached.as_ref()
        && at.elapsed() < crate::ThroughputCache::TTL
    {
        return Ok(Json(value.clone()));
    }
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let data = ops::throughput(state.queue.pool(), since)
        .await?
        .into_iter()
        .map(|t| MinuteOut {
            queue: t.queue,
            minute: t.minute,
            succeeded: t.succeeded,
            failed: t.failed,
        })
        .collect();
    let value = serde_json::to_value(ThroughputList { since, data }).map_err(ApiError::internal)?;
    *cached = Some((std::time::Instant::now(), value.clone()));
    Ok(Json(value))
}

/// One audit record.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = AuditRecord)]
struct AuditOut {
    id: i64,
    action: String,
    /// `attempt` or `outcome`.
    phase: String,
    /// `attempted`, `succeeded` or `failed`.
    outcome: String,
    actor: String,
    resource_type: String,
    resource_id: String,
    correlation_id: Option<String>,
    reason: Option<String>,
    context: serde_json::Value,
    created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(serde::Serialize, ToSchema)]
struct AuditList {
    data: Vec<AuditOut>,
}

/// Most audit records shown for one job.
const JOB_AUDIT_LIMIT: i64 = 500;

/// The audit trail of one job, oldest first: each run's ATTEMPT and
/// OUTCOME and every action taken on it (at most 500 records).
#[utoipa::path(
    get, path = "/admin/jobs/{job_id}/audit", tag = "admin", params(PathId<JobId>),
    responses((status = 200, body = AuditList), Problems),
)]
async fn job_audit(
    State(state): State<AppState>,
    _: Operator,
    PathId(id): PathId<JobId>,
) -> Result<Json<AuditList>, ApiError> {
    let data = state
        .store
        .job_audit(&id.to_string(), JOB_AUDIT_LIMIT)
        .await?
        .into_iter()
        .map(|r| AuditOut {
            id: r.id,
            action: r.action,
            phase: r.phase,
            outcome: r.outcome,
            actor: r.actor,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            correlation_id: r.correlation_id,
            reason: r.reason,
            context: r.context,
            created_at: r.created_at,
        })
        .collect();
    Ok(Json(AuditList { data }))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ConnectionsQuery {
    /// Only connections in this status.
    #[param(schema_with = connection_status_schema, example = "reauth_required")]
    status: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The connection statuses, as the domain names them.
fn connection_status_schema() -> utoipa::openapi::schema::Object {
    use dashtam_domain::model::ConnectionStatus;
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(ConnectionStatus::ALL.iter().map(|s| s.as_str())))
        .build()
}

#[derive(serde::Serialize, ToSchema)]
struct ConnectionList {
    data: Vec<super::views::ConnectionOut>,
}

/// Every user's connections, newest first, optionally of one status (who
/// must authorize again: `status=reauth_required`).
#[utoipa::path(
    get, path = "/admin/connections", tag = "admin", params(ConnectionsQuery),
    responses((status = 200, body = ConnectionList), Problems),
)]
async fn connections(
    State(state): State<AppState>,
    _: Operator,
    q: Result<axum::extract::Query<ConnectionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConnectionList>, ApiError> {
    use dashtam_domain::model::ConnectionStatus;
    let q = super::shared::query(q)?;
    let status = super::shared::one_of(
        "status",
        q.status.as_deref(),
        &ConnectionStatus::ALL,
        ConnectionStatus::as_str,
    )?;
    let limit = super::shared::page_size(q.limit, 100, 1000)?;
    let data = state
        .store
        .all_connections(status, limit)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(ConnectionList { data }))
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
