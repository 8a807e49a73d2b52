//! Operator endpoints: queue statistics, pause/resume, and job retry and
//! discard. Every action is audited in the transaction that performs it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use dashtam_domain::JobId;
use dashtam_domain::audit::{AuditAction, AuditEntry, AuditOutcome, AuditPhase};
use dashtam_queue::ops;

use super::jobs::JobView;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::parse_id;
use crate::{AppState, RequestId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/queues", get(queues))
        .route("/admin/queues/{queue}/{action}", post(set_paused))
        .route("/admin/jobs/{job_id}/retry", post(retry))
        .route("/admin/jobs/{job_id}", delete(discard))
}

pub fn require_operator(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == Role::Operator {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            "this endpoint is for operators",
        ))
    }
}

/// An audit OUTCOME for an operator (or client) action.
pub fn action(
    action: AuditAction,
    caller: &Caller,
    resource_type: &'static str,
    resource_id: String,
    request_id: &RequestId,
) -> AuditEntry {
    AuditEntry {
        action,
        phase: AuditPhase::Outcome,
        outcome: AuditOutcome::Succeeded,
        actor: format!("user:{}", caller.user),
        resource_type,
        resource_id,
        correlation_id: Some(request_id.0.clone()),
        reason: None,
        context: serde_json::json!({}),
    }
}

fn valid_queue(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::invalid_field(
            "queue",
            "must be 1–64 letters, digits, _ or -",
        ));
    }
    Ok(())
}

async fn queues(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_operator(&caller)?;
    let stats = ops::stats(state.queue.pool()).await?;
    Ok(Json(serde_json::json!({ "data": stats })))
}

/// `POST /admin/queues/{queue}/pause` and `…/resume`.
async fn set_paused(
    State(state): State<AppState>,
    caller: Caller,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path((queue, verb)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_operator(&caller)?;
    valid_queue(&queue)?;
    let mut tx = begin(&state).await?;
    let audit = match verb.as_str() {
        "pause" => {
            ops::pause(&mut *tx, &queue, &caller.user.to_string()).await?;
            AuditAction::QueuePaused
        }
        "resume" => {
            ops::resume(&mut *tx, &queue).await?;
            AuditAction::QueueResumed
        }
        other => return Err(ApiError::not_found(format!("no queue action {other:?}"))),
    };
    commit_audited(tx, action(audit, &caller, "queue", queue, &rid)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A transaction on the queue's database for an action and its audit record.
pub async fn begin(
    state: &AppState,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ApiError> {
    state.queue.pool().begin().await.map_err(ApiError::internal)
}

/// Appends the audit record for the action done in `tx`, and commits both.
pub async fn commit_audited(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    entry: AuditEntry,
) -> Result<(), ApiError> {
    dashtam_store::audit::append(&mut *tx, &entry)
        .await
        .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)
}

/// Why a job action did not apply: the job is gone, or in the wrong state.
async fn refusal(state: &AppState, id: JobId, why: &str) -> ApiError {
    match state.queue.get(id.0).await {
        Ok(None) => ApiError::not_found(format!("job {id} not found")),
        Ok(Some(j)) => ApiError::conflict(format!("job {id} is {}; {why}", j.state)),
        Err(e) => e.into(),
    }
}

async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    require_operator(&caller)?;
    let id: JobId = parse_id("job_id", &id)?;
    let mut tx = begin(&state).await?;
    let Some(job) = ops::retry(&mut *tx, id.0).await? else {
        return Err(refusal(&state, id, "only failed or cancelled jobs can be retried").await);
    };
    let entry = action(
        AuditAction::JobRetried,
        &caller,
        "job",
        id.to_string(),
        &rid,
    );
    commit_audited(tx, entry).await?;
    Ok(Json(job.into()))
}

async fn discard(
    State(state): State<AppState>,
    caller: Caller,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_operator(&caller)?;
    let id: JobId = parse_id("job_id", &id)?;
    let mut tx = begin(&state).await?;
    if ops::discard(&mut *tx, id.0).await?.is_none() {
        return Err(refusal(&state, id, "cancel it before discarding it").await);
    }
    let entry = action(
        AuditAction::JobDiscarded,
        &caller,
        "job",
        id.to_string(),
        &rid,
    );
    commit_audited(tx, entry).await?;
    Ok(StatusCode::NO_CONTENT)
}
