//! Job status.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use dashtam_domain::JobId;
use dashtam_queue::JobRecord;
use serde::Serialize;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::parse_id;

pub fn router() -> Router<AppState> {
    Router::new().route("/jobs/{job_id}", get(show))
}

/// A job as API clients see it.
#[derive(Serialize)]
pub struct JobView {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub state: String,
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
    let id: JobId = parse_id("job_id", &id)?;
    let job = state
        .queue
        .get(id.0)
        .await?
        .filter(|j| j.owner.as_deref() == Some(caller.user.as_str()))
        .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))?;
    Ok(Json(job.into()))
}
