//! Job status.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use dashtam_domain::JobId;
use dashtam_domain::jobs::JobKind;
use dashtam_queue::{JobRecord, JobState};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::actions;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::extract::{PathId, parse_id};
use crate::idempotency::IdempotencyKey;
use crate::openapi::Problems;
use crate::{AppState, RequestId};
use dashtam_domain::audit::AuditAction;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(cancel))
        .routes(routes!(events))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    #[param(value_type = Option<JobState>, inline)]
    state: Option<String>,
    #[param(value_type = Option<JobKind>, inline)]
    kind: Option<String>,
    #[param(value_type = Option<Uuid>)]
    connection_id: Option<String>,
    /// Only this queue's jobs.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    queue: Option<String>,
    /// Only this user's jobs (operators; a client lists its own): a
    /// subject, 1 to 255 characters, no control characters.
    #[param(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    owner: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<Uuid>)]
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct JobPage {
    data: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    next_cursor: Option<String>,
}

/// A client's own jobs (those enqueued for its connections, by it or by the
/// scheduler), or, for an operator, everyone's; newest first.
#[utoipa::path(
    get, path = "/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobPage), Problems),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let q = super::shared::query(q)?;
    let job_state = super::shared::one_of(
        "state",
        q.state.as_deref(),
        &JobState::ALL,
        JobState::as_str,
    )?;
    let kind = super::shared::one_of("kind", q.kind.as_deref(), &JobKind::ALL, JobKind::as_str)?;
    let connection: Option<dashtam_domain::ConnectionId> = q
        .connection_id
        .as_deref()
        .map(|c| parse_id("connection_id", c))
        .transpose()?;
    let after: Option<JobId> = q
        .cursor
        .as_deref()
        .map(|c| parse_id("cursor", c))
        .transpose()?;
    let limit = super::shared::page_size(q.limit, 50, 500)?;
    let queue: Option<actions::QueueName> = q
        .queue
        .as_deref()
        .map(|v| v.parse().map_err(|e| ApiError::invalid_field("queue", e)))
        .transpose()?;
    if let Some(o) = q.owner.as_deref()
        && (o.is_empty() || o.chars().count() > 255 || o.chars().any(char::is_control))
    {
        return Err(ApiError::invalid_field(
            "owner",
            "must be 1 to 255 characters without control characters",
        ));
    }
    let owner = match (caller.role, q.owner.as_deref()) {
        (Role::Operator, owner) => owner,
        (_, Some(o)) if o != caller.user.as_str() => {
            return Err(ApiError::forbidden(
                "owner: only operators list other users' jobs",
            ));
        }
        _ => Some(caller.user.as_str()),
    };
    let connection = connection.map(|c| c.to_string());
    let filter = dashtam_queue::JobFilter {
        owner,
        queue: queue.as_ref().map(actions::QueueName::as_str),
        state: job_state,
        kind: kind.map(JobKind::as_str),
        subject: connection.as_deref(),
        after: after.map(|a| a.0),
    };
    let mut jobs = state.queue.list(&filter, limit + 1).await?;
    let next_cursor = super::shared::next_page(&mut jobs, limit, |j| j.id.to_string());
    Ok(Json(JobPage {
        data: jobs.into_iter().map(JobView::from).collect(),
        next_cursor,
    }))
}

/// The job, if the caller may see it: its owner, or any operator.
async fn visible(state: &AppState, caller: &Caller, id: JobId) -> Result<JobRecord, ApiError> {
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
#[utoipa::path(
    post, path = "/jobs/{job_id}/cancel", tag = "jobs",
    params(PathId<JobId>, IdempotencyKey),
    responses(
        (status = 200, description = "Cancelled, or asked to stop", body = JobView),
        Problems,
    ),
)]
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    axum::Extension(rid): axum::Extension<RequestId>,
    PathId(id): PathId<JobId>,
) -> Result<Json<JobView>, ApiError> {
    let job = visible(&state, &caller, id).await?;
    let entry = super::shared::action(
        AuditAction::JobCancelled,
        &caller,
        "job",
        job.id.to_string(),
        &rid,
    );
    let Some(cancelled) = actions::cancel_job(state.queue.pool(), job.id, &entry).await? else {
        return Err(ApiError::conflict(format!(
            "job {} already finished ({}); nothing to cancel",
            job.id, job.state
        )));
    };
    Ok(Json(cancelled.into()))
}

/// A job as API clients see it.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub queue: String,
    #[schema(value_type = JobKind)]
    pub kind: String,
    pub state: JobState,
    /// A running job asked to stop (it will, at its next checkpoint).
    pub cancel_requested: bool,
    pub connection_id: Option<String>,
    /// The job's arguments (ids and versions; credentials are never put in
    /// a job).
    pub args: serde_json::Value,
    /// The user the job is for.
    pub owner: Option<String>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i16,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub progress: Option<serde_json::Value>,
    /// Why the job waits, when something it depends on asked it to:
    /// `{"reason": "provider_unavailable" | "provider_rate_limited" |
    /// "provider_budget" | "connection_rate_limited", "until": …}`.
    pub waiting: Option<serde_json::Value>,
    pub last_error: Option<serde_json::Value>,
    pub errors: serde_json::Value,
}

impl From<JobRecord> for JobView {
    fn from(j: JobRecord) -> Self {
        let last_error = j.errors.as_array().and_then(|a| a.last()).cloned();
        // Every kind of ours is about a connection.
        let connection_id = j.subject.filter(|_| JobKind::parse(&j.kind).is_some());
        Self {
            id: j.id,
            queue: j.queue,
            kind: j.kind,
            state: j.state,
            cancel_requested: j.cancel_requested,
            connection_id,
            args: j.payload,
            owner: j.owner,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            priority: j.priority,
            run_at: j.run_at,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            progress: j.progress,
            waiting: j.waiting,
            last_error,
            errors: j.errors,
        }
    }
}

/// A job: its state, attempts, progress and errors (its owner, or any
/// operator).
#[utoipa::path(
    get, path = "/jobs/{job_id}", tag = "jobs", params(PathId<JobId>),
    responses((status = 200, body = JobView), Problems),
)]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<JobId>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(visible(&state, &caller, id).await?.into()))
}

/// One Server-Sent Event of `GET /jobs/{job_id}/events`.
#[derive(ToSchema)]
struct JobEvent {
    /// Always `job`.
    #[schema(pattern = "^job$")]
    event: &'static str,
    /// The job as JSON (a `JobView`).
    #[schema(content_media_type = "application/json")]
    data: String,
}

impl JobEvent {
    fn of(job: JobRecord) -> Self {
        Self {
            event: "job",
            data: serde_json::to_string(&JobView::from(job)).unwrap_or_default(),
        }
    }
}

impl From<JobEvent> for axum::response::sse::Event {
    fn from(e: JobEvent) -> Self {
        Self::default().event(e.event).data(e.data)
    }
}

/// How often a stream looks at its job even without a notification.
const EVENTS_FALLBACK: std::time::Duration = std::time::Duration::from_secs(10);

/// The job's state and progress as Server-Sent Events: one `job` event
/// now, one per change (driven by Postgres LISTEN/NOTIFY, so any API
/// daemon's stream sees changes made anywhere), and the stream ends after
/// the event that shows the job finished.
#[utoipa::path(
    get, path = "/jobs/{job_id}/events", tag = "jobs", params(PathId<JobId>),
    responses(
        (status = 200, description = "An `event: job` now and on every change; the stream ends after the job does",
         content_type = "text/event-stream", body = JobEvent),
        Problems,
    ),
)]
async fn events(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<JobId>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    use axum::response::sse::{Event, KeepAlive, Sse};

    let job = visible(&state, &caller, id).await?;
    let events = state
        .job_events
        .clone()
        .ok_or_else(|| ApiError::unavailable("live job events are not enabled here", None))?;
    // Subscribe before reading, so no change between the two is missed.
    let rx = events.subscribe();
    events.watch(job.id).await?;
    let first = state.queue.get(job.id).await?.unwrap_or(job);

    struct Stream {
        queue: dashtam_queue::Queue,
        rx: tokio::sync::broadcast::Receiver<dashtam_queue::events::Event>,
        last: Option<JobRecord>,
        pending: Option<JobRecord>,
        done: bool,
        shutdown: tokio_util::sync::CancellationToken,
    }
    fn changed(a: &JobRecord, b: &JobRecord) -> bool {
        (
            &a.state,
            &a.progress,
            a.attempt,
            a.cancel_requested,
            &a.errors,
            &a.waiting,
        ) != (
            &b.state,
            &b.progress,
            b.attempt,
            b.cancel_requested,
            &b.errors,
            &b.waiting,
        )
    }
    let stream = Stream {
        queue: state.queue.clone(),
        rx,
        last: None,
        pending: Some(first),
        done: false,
        shutdown: state.shutdown.clone(),
    };
    let stream = futures::stream::unfold(stream, |mut s| async move {
        loop {
            if let Some(job) = s.pending.take() {
                let finished = job.is_finished();
                let event = Event::from(JobEvent::of(job.clone()));
                s.last = Some(job);
                s.done = finished;
                return Some((Ok::<_, std::convert::Infallible>(event), s));
            }
            if s.done {
                return None;
            }
            let id = s.last.as_ref().map(|j| j.id)?;
            let look = tokio::select! {
                msg = s.rx.recv() => match msg {
                    Ok(Some(job)) => job == id,
                    // Missed notifications (reconnect, lag): look anyway.
                    Ok(None) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(EVENTS_FALLBACK) => true,
                // The daemon is stopping: say so and end, so the client
                // reconnects (to another daemon) instead of holding the
                // shutdown up.
                _ = s.shutdown.cancelled() => {
                    s.done = true;
                    let event = Event::default()
                        .event("shutdown")
                        .data(r#"{"reason":"the server is shutting down; reconnect to keep following the job"}"#);
                    return Some((Ok(event), s));
                }
            };
            if !look {
                continue;
            }
            match s.queue.get(id).await {
                Ok(Some(job)) if s.last.as_ref().is_none_or(|l| changed(l, &job)) => {
                    s.pending = Some(job);
                }
                Ok(Some(_)) => {}
                // Discarded (deleted) while we watched: nothing more to say.
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "reading a watched job failed");
                    return None;
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
