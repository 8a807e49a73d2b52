//! Connections and the syncs enqueued for them.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dashtam_domain::ConnectionId;
use dashtam_domain::jobs::{KIND_SYNC, QUEUE_SYNC, SyncJob};
use dashtam_domain::model::{ConnectionStatus, ProviderKind};
use dashtam_domain::ports::ProviderError;
use dashtam_queue::{Enqueued, NewJob};
use dashtam_store::connections::{Connection, NewConnection};
use serde::{Deserialize, Serialize};

use super::jobs::JobView;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiJson, parse_id};
use crate::{AppState, RequestId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/connections", post(create).get(list))
        .route("/connections/{connection_id}", get(show))
        .route("/connections/{connection_id}/syncs", post(enqueue_sync))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConnection {
    provider: ProviderKind,
    /// The one-time token from the provider's link flow.
    public_token: String,
}

#[derive(Serialize)]
struct List<T> {
    data: Vec<T>,
}

fn location(path: String) -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::LOCATION,
        HeaderValue::from_str(&path).unwrap_or(HeaderValue::from_static("/")),
    )]
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    axum::Extension(request_id): axum::Extension<RequestId>,
    ApiJson(body): ApiJson<CreateConnection>,
) -> Result<Response, ApiError> {
    if body.public_token.trim().is_empty() || body.public_token.len() > 512 {
        return Err(ApiError::invalid_field(
            "public_token",
            "must be 1 to 512 characters",
        ));
    }
    let source = state.providers.sync_source(body.provider).ok_or_else(|| {
        ApiError::invalid_field(
            "provider",
            format!("{} is not configured", body.provider.as_str()),
        )
    })?;
    let credentials = source
        .exchange_public_token(&body.public_token)
        .await
        .map_err(|e| match e {
            ProviderError::Permanent(_) | ProviderError::Unauthorized(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "provider-refused",
                "The provider refused the token",
                "the provider did not accept this public_token (expired, already used or invalid)",
            ),
            ProviderError::RateLimited { retry_after } => ApiError::unavailable(
                "the provider is rate limiting us; try again later",
                Some(retry_after.map_or(30, |d| d.as_secs())),
            ),
            ProviderError::Transient(_) | ProviderError::MutationDuringPagination => {
                ApiError::unavailable("the provider is unavailable; try again later", Some(30))
            }
        })?;
    let conn = state
        .store
        .create_connection(NewConnection {
            user: &caller.user,
            provider: body.provider,
            credentials: &credentials,
            access_token_expires_at: None,
            refresh_token_expires_at: None,
            correlation_id: Some(request_id.0),
        })
        .await?;
    let loc = location(format!("/api/v1/connections/{}", conn.id));
    Ok((StatusCode::CREATED, loc, Json(conn)).into_response())
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<List<Connection>>, ApiError> {
    Ok(Json(List {
        data: state.store.connections(&caller.user).await?,
    }))
}

async fn owned(state: &AppState, caller: &Caller, raw_id: &str) -> Result<Connection, ApiError> {
    let id: ConnectionId = parse_id("connection_id", raw_id)?;
    state
        .store
        .connection(&caller.user, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("connection {id} not found")))
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Connection>, ApiError> {
    Ok(Json(owned(&state, &caller, &id).await?))
}

/// 202 with a new job, or 200 with the sync already pending for this
/// connection; `Location` points at the job either way.
async fn enqueue_sync(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let conn = owned(&state, &caller, &id).await?;
    if conn.status != ConnectionStatus::Active.as_str() {
        return Err(ApiError::conflict(format!(
            "connection {} is {}; only active connections can sync",
            conn.id, conn.status
        )));
    }
    let job = SyncJob::new(ConnectionId(conn.id));
    let mut new = NewJob::new(
        QUEUE_SYNC,
        KIND_SYNC,
        serde_json::to_value(&job).map_err(ApiError::internal)?,
    );
    new.unique_key = Some(job.unique_key());
    new.owner = Some(caller.user.to_string());
    new.max_attempts = state.jobs.sync_max_attempts;
    let enqueued = state.queue.enqueue(new).await?;
    let status = match enqueued {
        Enqueued::Created(_) => StatusCode::ACCEPTED,
        Enqueued::Existing(_) => StatusCode::OK,
    };
    let view = JobView::from(enqueued.job().clone());
    let loc = location(format!("/api/v1/jobs/{}", view.id));
    Ok((status, loc, Json(view)).into_response())
}
