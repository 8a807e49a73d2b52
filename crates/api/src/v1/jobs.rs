//! Job status.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use dashtam_domain::JobId;
use dashtam_queue::JobRecord;
use serde::Serialize;
use uuid::Uuid;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::parse_id;
use crate::{AppState, RequestId};
use dashtam_domain::audit::AuditAction;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs/{job_id}", get(show))
        .route("/jobs/{job_id}/cancel", post(cancel))
}

/// The job, if the caller may see it: its owner, or any operator.
async fn visible(state: &AppState, caller: &Caller, raw: &str) -> Result<JobRecord, ApiError> {
    let id: JobId = parse_id("job_id", raw)?;
    state
        .queue
        .get(id.0)
        .await?
        .filter(|j| {
            caller.role == Role::Operator || j.owner.as_deref() == Some(caller.user.as_str())
        })
        .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))
}

/// Cancels a pending job, or asks a running one to stop at its next page
/// boundary (nothing it collected is committed).
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = visible(&state, &caller, &id).await?;
    let mut tx = super::admin::begin(&state).await?;
    let Some(job) = dashtam_queue::ops::cancel(&mut *tx, job.id).await? else {
        return Err(ApiError::conflict(format!(
            "job {} already finished ({}); nothing to cancel",
            job.id, job.state
        )));
    };
    let entry = super::admin::action(
        AuditAction::JobCancelled,
        &caller,
        "job",
        job.id.to_string(),
        &rid,
    );
    super::admin::commit_audited(tx, entry).await?;
    Ok(Json(job.into()))
}

/// A job as API clients see it.
#[derive(Serialize)]
pub struct JobView {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub state: String,
    /// A running job asked to stop (it will, at its next checkpoint).
    pub cancel_requested: bool,
    pub connection_id: Option<String>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i16,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub progress: Option<serde_json::Value>,
    pub last_error: Option<serde_json::Value>,
    pub errors: serde_json::Value,
}

impl From<JobRecord> for JobView {
    fn from(j: JobRecord) -> Self {
        let last_error = j.errors.as_array().and_then(|a| a.last()).cloned();
        let connection_id = j
            .payload
            .get("connection_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        Self {
            id: j.id,
            queue: j.queue,
            kind: j.kind,
            state: j.state,
            cancel_requested: j.cancel_requested,
            connection_id,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            priority: j.priority,
            run_at: j.run_at,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            progress: j.progress,
            last_error,
            errors: j.errors,
        }
    }
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(visible(&state, &caller, &id).await?.into()))
}
