//! Connections and the syncs enqueued for them.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use dashtam_domain::ConnectionId;
use dashtam_domain::audit::{AuditAction, AuditEntry, AuditOutcome, AuditPhase};
use dashtam_domain::jobs::SyncJob;
use dashtam_domain::link::{Link, LinkFields};
use dashtam_domain::model::ConnectionStatus;
use dashtam_domain::ports::{ProviderCredentials, ProviderError};
use dashtam_providers::Source;
use dashtam_queue::Enqueued;
use dashtam_store::connections::{Connection, NewConnection};

use super::views::ConnectionOut;
use serde::Serialize;

use super::jobs::JobView;
use super::shared::sync_job;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiJson, PathId};
use crate::idempotency::IdempotencyKey;
use crate::openapi::Problems;
use crate::{AppState, RequestId};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, remove))
        .routes(routes!(enqueue_sync))
}

fn exchange_failed(e: ProviderError, what: &str) -> ApiError {
    match e {
        ProviderError::Permanent(_)
        | ProviderError::Unauthorized(_)
        | ProviderError::AccessTokenExpired => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "provider-refused",
            "The provider refused the token",
            format!("the provider did not accept this {what} (expired, already used or invalid)"),
        ),
        ProviderError::RateLimited { retry_after, .. } => ApiError::unavailable(
            "the provider is rate limiting us; try again later",
            Some(retry_after.map_or(30, |d| d.as_secs())),
        ),
        ProviderError::Transient(_) | ProviderError::MutationDuringPagination => {
            ApiError::unavailable("the provider is unavailable; try again later", Some(30))
        }
    }
}

#[derive(Serialize, ToSchema)]
struct ConnectionList {
    data: Vec<ConnectionOut>,
}

fn location(path: String) -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::LOCATION,
        HeaderValue::from_str(&path).unwrap_or(HeaderValue::from_static("/")),
    )]
}

/// Links a connection: exchanges the link flow's public token (Plaid) or
/// the consent step's authorization code (Schwab) for tokens, which are
/// stored encrypted and never shown.
#[utoipa::path(
    post, path = "/connections", tag = "connections", params(IdempotencyKey),
    request_body = Link,
    responses(
        (status = 201, description = "Linked; `Location` names the connection", body = ConnectionOut),
        Problems,
    ),
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    axum::Extension(request_id): axum::Extension<RequestId>,
    ApiJson(fields): ApiJson<LinkFields>,
) -> Result<Response, ApiError> {
    let link = Link::try_from(fields).map_err(|e| ApiError::invalid_field(e.field, e.message))?;
    let provider = link.provider();
    let source = state.providers.source(provider).ok_or_else(|| {
        ApiError::invalid_field(
            "provider",
            format!("{} is not configured", provider.as_str()),
        )
    })?;
    let (credentials, access_expires, refresh_expires, item_id) = match (&source, &link) {
        (Source::Cursor(source), Link::Plaid { public_token }) => {
            let linked = source
                .exchange_public_token(public_token.as_str())
                .await
                .map_err(|e| exchange_failed(e, "public_token"))?;
            (linked.credentials, None, None, Some(linked.item_id))
        }
        (Source::Window(source), Link::Schwab { authorization_code }) => {
            let grant = source
                .exchange_code(authorization_code.as_str())
                .await
                .map_err(|e| exchange_failed(e, "authorization_code"))?;
            let now = Utc::now();
            let lifetime = |d| chrono::Duration::from_std(d).unwrap_or_default();
            (
                ProviderCredentials {
                    access_token: grant.access_token,
                    refresh_token: grant.refresh_token,
                },
                Some(now + lifetime(grant.access_expires_in)),
                Some(now + lifetime(source.refresh_token_lifetime())),
                None,
            )
        }
        _ => {
            return Err(ApiError::invalid_field(
                "provider",
                format!("{} is not linked this way here", provider.as_str()),
            ));
        }
    };
    let created = state
        .store
        .create_connection(NewConnection {
            user: &caller.user,
            provider,
            credentials: &credentials,
            access_token_expires_at: access_expires,
            refresh_token_expires_at: refresh_expires,
            provider_item_id: item_id.as_deref(),
            correlation_id: Some(request_id.0.to_string()),
        })
        .await;
    let conn = match created {
        Ok(conn) => conn,
        Err(e) => {
            // The provider granted access we could not store: give the
            // grant back rather than leave it live and unknown to us (the
            // one-time token is spent either way; the client links again).
            if let Err(revoke) = source.revoke(&credentials).await {
                tracing::warn!(error = %revoke, "could not revoke a grant whose connection was not stored");
            }
            return Err(e.into());
        }
    };
    // Webhook-driven syncs: the provider tells us when there is new data.
    // Without it the stale-sync sweep still syncs the connection.
    if let (Source::Cursor(source), Some(url)) = (&source, &state.providers.plaid_webhook_url)
        && let Err(e) = source.register_webhook(&credentials, url).await
    {
        tracing::warn!(error = %e, connection_id = %conn.id, "could not register the connection's webhook");
    }
    let loc = location(format!("/api/v1/connections/{}", conn.id));
    Ok((StatusCode::CREATED, loc, Json(ConnectionOut::from(conn))).into_response())
}

/// The caller's connections, with status and token expiry times (never
/// tokens).
#[utoipa::path(
    get, path = "/connections", tag = "connections",
    responses((status = 200, body = ConnectionList), Problems),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ConnectionList>, ApiError> {
    Ok(Json(ConnectionList {
        data: state
            .store
            .connections(&caller.user)
            .await?
            .into_iter()
            .map(ConnectionOut::from)
            .collect(),
    }))
}

async fn owned(
    state: &AppState,
    caller: &Caller,
    id: ConnectionId,
) -> Result<Connection, ApiError> {
    state
        .store
        .connection(&caller.user, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("connection {id} not found")))
}

/// One of the caller's connections.
#[utoipa::path(
    get, path = "/connections/{connection_id}", tag = "connections", params(PathId<ConnectionId>),
    responses((status = 200, body = ConnectionOut), Problems),
)]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<ConnectionId>,
) -> Result<Json<ConnectionOut>, ApiError> {
    Ok(Json(owned(&state, &caller, id).await?.into()))
}

/// Revokes the connection's tokens at the provider and wipes them here;
/// the connection stays (as `revoked`) with its history. Deleting again is
/// a no-op.
#[utoipa::path(
    delete, path = "/connections/{connection_id}", tag = "connections", params(PathId<ConnectionId>),
    responses((status = 204, description = "Revoked and wiped"), Problems),
)]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    axum::Extension(request_id): axum::Extension<RequestId>,
    PathId(id): PathId<ConnectionId>,
) -> Result<StatusCode, ApiError> {
    let conn = owned(&state, &caller, id).await?;
    let id = ConnectionId(conn.id);
    // The token lease (not a transaction: nothing stays open in the
    // database while the provider answers) keeps a refresh from racing the
    // revocation.
    let lease = state
        .store
        .lease_credentials(id, state.lease)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("connection {id} not found")))?;
    let Some(credentials) = lease.credentials.clone() else {
        lease.release().await?;
        return Ok(StatusCode::NO_CONTENT);
    };
    let provider_revoked = match state.providers.source(lease.provider) {
        Some(source) => match source.revoke(&credentials).await {
            Ok(()) => true,
            Err(e) => {
                // Our copy goes regardless: what we no longer hold cannot leak.
                tracing::warn!(error = %e, connection_id = %id, "the provider did not confirm the revocation");
                false
            }
        },
        None => false,
    };
    let outcome = AuditEntry {
        action: AuditAction::ConnectionRevoked,
        phase: AuditPhase::Outcome,
        outcome: AuditOutcome::Succeeded,
        actor: format!("user:{}", caller.user),
        resource_type: "connection",
        resource_id: id.to_string(),
        correlation_id: Some(request_id.0.to_string()),
        reason: None,
        context: serde_json::json!({ "provider_revoked": provider_revoked }),
    };
    lease.wipe(&outcome).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// 202 with a new job, or 200 with the sync already pending for this
/// connection; `Location` points at the job either way.
#[utoipa::path(
    post, path = "/connections/{connection_id}/syncs", tag = "connections",
    params(PathId<ConnectionId>, IdempotencyKey),
    responses(
        (status = 202, description = "A new sync job", body = JobView),
        (status = 200, description = "The sync already pending for this connection", body = JobView),
        Problems,
    ),
)]
async fn enqueue_sync(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId<ConnectionId>,
) -> Result<Response, ApiError> {
    let conn = owned(&state, &caller, id).await?;
    if conn.status != ConnectionStatus::Active.as_str() {
        return Err(ApiError::conflict(format!(
            "connection {} is {}; only active connections can sync",
            conn.id, conn.status
        )));
    }
    let job = SyncJob::new(ConnectionId(conn.id));
    let new = sync_job(&state, &job, caller.user.as_str(), &conn.provider)?;
    let enqueued = state.queue.enqueue(new).await?;
    let status = match enqueued {
        Enqueued::Created(_) => StatusCode::ACCEPTED,
        Enqueued::Existing(_) => StatusCode::OK,
    };
    let view = JobView::from(enqueued.job().clone());
    let loc = location(format!("/api/v1/jobs/{}", view.id));
    Ok((status, loc, Json(view)).into_response())
}

//END
