//! Provider webhooks: `POST /webhooks/plaid`.
//!
//! Not authenticated by our tokens (Plaid cannot hold one): by Plaid's
//! signature instead, checked by the adapter's [`WebhookVerifier`]. A
//! webhook that does not verify, is stale or was received before changes
//! nothing and gets a 4xx; one that does is acted on and acknowledged with
//! a 200, also when it names no connection of ours (Plaid would otherwise
//! deliver it again and again).
//!
//! [`WebhookVerifier`]: dashtam_domain::ports::WebhookVerifier

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use dashtam_domain::ConnectionId;
use dashtam_domain::JobId;
use dashtam_domain::audit::{AuditAction, AuditEntry, AuditOutcome, AuditPhase};
use dashtam_domain::jobs::SyncJob;
use dashtam_domain::model::{ConnectionStatus, ProviderKind};
use dashtam_domain::ports::{ProviderEvent, VerifiedWebhook, WebhookRejected};
use dashtam_queue::{Enqueued, JobState};
use dashtam_store::webhooks::{ConnectionEvent, ItemConnection};
use dashtam_telemetry::metrics::METRICS;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::shared::sync_job;
use crate::error::ApiError;
use crate::openapi::Problems;
use crate::{AppState, RequestId};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(plaid))
}

/// What was done with a webhook.
#[derive(Serialize, ToSchema)]
struct WebhookAck {
    /// `applied` (the connection changed or a sync was enqueued),
    /// `coalesced` (a sync was already waiting), `ignored` (nothing to do
    /// in the connection's state, or a kind we do not act on) or
    /// `unknown_item` (no connection of ours).
    result: &'static str,
    /// The sync job the webhook enqueued or joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<uuid::Uuid>,
}

fn count(kind: &str, result: &str) {
    METRICS
        .webhooks
        .with_label_values(&["plaid", kind, result])
        .inc();
}

fn refused(e: WebhookRejected) -> ApiError {
    let (result, err) = match &e {
        WebhookRejected::Unsigned(_) => ("unsigned", unverified(&e)),
        WebhookRejected::Forged(_) => ("forged", unverified(&e)),
        WebhookRejected::Stale(_) => ("stale", unverified(&e)),
        WebhookRejected::Malformed(_) => ("malformed", ApiError::bad_request(e.to_string())),
        WebhookRejected::KeyUnavailable(_) => (
            "key_unavailable",
            ApiError::unavailable(
                "the provider's verification key cannot be fetched now; deliver again later",
                Some(30),
            ),
        ),
    };
    tracing::info!(error = %e, "plaid webhook refused");
    count("none", result);
    err
}

fn unverified(e: &WebhookRejected) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "webhook-unverified",
        "Webhook not verified",
        e.to_string(),
    )
}

/// Receives Plaid's webhooks (`TRANSACTIONS`/`SYNC_UPDATES_AVAILABLE` starts
/// a sync; `ITEM` webhooks change the connection's state). Verified by the
/// `Plaid-Verification` JWT, not by a bearer token.
#[utoipa::path(
    post, path = "/webhooks/plaid", tag = "webhooks", security(()),
    params(("Plaid-Verification" = Option<String>, Header,
            description = "Plaid's ES256 JWT over the body's SHA-256")),
    request_body(content = Object, description = "The webhook, as Plaid signed it",
                 content_type = "application/json"),
    responses(
        (status = 200, description = "Verified and handled", body = WebhookAck),
        Problems,
    ),
)]
async fn plaid(
    State(state): State<AppState>,
    axum::Extension(request_id): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookAck>, ApiError> {
    let verifier = state
        .providers
        .plaid_webhooks
        .clone()
        .ok_or_else(|| ApiError::not_found("Plaid is not configured"))?;
    let signature = headers
        .get("plaid-verification")
        .and_then(|v| v.to_str().ok());
    let VerifiedWebhook { event, delivery } = verifier
        .verify(signature, &body, Utc::now())
        .await
        .map_err(refused)?;
    // Verified: a second delivery of the very same signature is a replay.
    if !state
        .store
        .first_receipt(ProviderKind::Plaid, &delivery)
        .await?
    {
        count(event.kind(), "replayed");
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "webhook-replayed",
            "Webhook already received",
            "this signed webhook was received before; it is not acted on twice",
        ));
    }
    let connection = match event.item_id() {
        Some(item) => {
            state
                .store
                .connection_by_item(ProviderKind::Plaid, item)
                .await?
        }
        None => None,
    };
    let ack = match connection {
        None if matches!(event, ProviderEvent::Other { .. }) => ack("ignored", None),
        None => ack("unknown_item", None),
        Some(conn) => act(&state, &request_id, &event, &conn).await?,
    };
    count(event.kind(), ack.result);
    tracing::info!(
        kind = event.kind(),
        result = ack.result,
        "plaid webhook handled"
    );
    Ok(Json(ack))
}

fn ack(result: &'static str, job_id: Option<uuid::Uuid>) -> WebhookAck {
    WebhookAck { result, job_id }
}

/// Does what `event` asks of `conn`.
async fn act(
    state: &AppState,
    request_id: &RequestId,
    event: &ProviderEvent,
    conn: &ItemConnection,
) -> Result<WebhookAck, ApiError> {
    let id = ConnectionId(conn.id);
    let active = conn.status == ConnectionStatus::Active.as_str();
    let (change, action, reason) = match event {
        ProviderEvent::SyncUpdatesAvailable { .. } if active => {
            return enqueue_sync(state, id, &conn.user_id).await;
        }
        ProviderEvent::LoginRequired { error_code, .. } => (
            ConnectionEvent::ReauthRequired,
            AuditAction::ReauthRequired,
            error_code.clone(),
        ),
        ProviderEvent::ReauthSoon { .. } => (
            ConnectionEvent::ReauthWarned,
            AuditAction::ReauthWarning,
            "provider_pending_expiration".to_owned(),
        ),
        ProviderEvent::PermissionRevoked { .. }
            if conn.status != ConnectionStatus::Revoked.as_str() =>
        {
            (
                ConnectionEvent::Revoked,
                AuditAction::ConnectionRevoked,
                "user_permission_revoked".to_owned(),
            )
        }
        ProviderEvent::LoginRepaired { .. } => (
            ConnectionEvent::Repaired,
            AuditAction::ConnectionRepaired,
            "provider_login_repaired".to_owned(),
        ),
        _ => return Ok(ack("ignored", None)),
    };
    let context = match event {
        ProviderEvent::ReauthSoon { at: Some(at), .. } => serde_json::json!({ "at": at }),
        _ => serde_json::json!({}),
    };
    let outcome = AuditEntry {
        action,
        phase: AuditPhase::Outcome,
        outcome: AuditOutcome::Succeeded,
        actor: "provider:plaid".into(),
        resource_type: "connection",
        resource_id: id.to_string(),
        correlation_id: Some(request_id.0.to_string()),
        reason: Some(reason),
        context,
    };
    let changed = state
        .store
        .apply_connection_event(id, change, &outcome)
        .await?;
    Ok(ack(if changed { "applied" } else { "ignored" }, None))
}

/// One pending sync per connection however many webhooks arrive; news that
/// arrives while a sync runs queues one follow-up behind it (that sync may
/// have fetched its last page already).
async fn enqueue_sync(
    state: &AppState,
    id: ConnectionId,
    user: &str,
) -> Result<WebhookAck, ApiError> {
    let provider = ProviderKind::Plaid.as_str();
    // A follow-up still waiting will fetch this news too.
    if let Some(next) = state.queue.holder_of(&SyncJob::follow_up_key(id)).await?
        && next.state != JobState::Running
    {
        return Ok(ack("coalesced", Some(next.id)));
    }
    let first = sync_job(state, &SyncJob::new(id), user, provider)?;
    let job = match state.queue.enqueue(first).await? {
        Enqueued::Created(job) => return Ok(ack("applied", Some(job.id))),
        Enqueued::Existing(job) if job.state != JobState::Running => {
            return Ok(ack("coalesced", Some(job.id)));
        }
        Enqueued::Existing(running) => running,
    };
    let next = sync_job(state, &SyncJob::after(id, JobId(job.id)), user, provider)?;
    Ok(match state.queue.enqueue(next).await? {
        Enqueued::Created(job) => ack("applied", Some(job.id)),
        Enqueued::Existing(job) => ack("coalesced", Some(job.id)),
    })
}
