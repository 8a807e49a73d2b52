//! The audit trail: an ATTEMPT record when work starts, an OUTCOME record
//! when it ends (committed with the data it describes).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    ConnectionCreated,
    ConnectionRevoked,
    ReauthRequired,
    ReauthWarning,
    /// The provider says a connection that needed its user works again.
    ConnectionRepaired,
    TokenRefreshAttempted,
    TokenRefreshSucceeded,
    TokenRefreshFailed,
    /// A provider's breaker or pause put the refresh off (no attempt spent).
    TokenRefreshDeferred,
    SyncAttempted,
    SyncSucceeded,
    SyncFailed,
    /// A provider's breaker or pause put the sync off (no attempt spent).
    SyncDeferred,
    ProviderBreakerOpened,
    ProviderBreakerClosed,
    AuthFailed,
    JobCancelled,
    JobRetried,
    JobDiscarded,
    QueuePaused,
    QueueResumed,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionCreated => "connection_created",
            Self::ConnectionRevoked => "connection_revoked",
            Self::ReauthRequired => "reauth_required",
            Self::ReauthWarning => "reauth_warning",
            Self::ConnectionRepaired => "connection_repaired",
            Self::TokenRefreshAttempted => "token_refresh_attempted",
            Self::TokenRefreshSucceeded => "token_refresh_succeeded",
            Self::TokenRefreshFailed => "token_refresh_failed",
            Self::TokenRefreshDeferred => "token_refresh_deferred",
            Self::SyncAttempted => "sync_attempted",
            Self::SyncSucceeded => "sync_succeeded",
            Self::SyncFailed => "sync_failed",
            Self::SyncDeferred => "sync_deferred",
            Self::ProviderBreakerOpened => "provider_breaker_opened",
            Self::ProviderBreakerClosed => "provider_breaker_closed",
            Self::AuthFailed => "auth_failed",
            Self::JobCancelled => "job_cancelled",
            Self::JobRetried => "job_retried",
            Self::JobDiscarded => "job_discarded",
            Self::QueuePaused => "queue_paused",
            Self::QueueResumed => "queue_resumed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditPhase {
    Attempt,
    Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    Attempted,
    Succeeded,
    Failed,
    /// Put off: something the work depends on is unavailable for a while.
    Deferred,
}

/// One row of the audit trail, ready to be appended.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub action: AuditAction,
    pub phase: AuditPhase,
    pub outcome: AuditOutcome,
    /// `user:<sub>` or `system:<component>`.
    pub actor: String,
    pub resource_type: &'static str,
    pub resource_id: String,
    pub correlation_id: Option<String>,
    pub reason: Option<String>,
    /// Never token material.
    pub context: serde_json::Value,
}

impl AuditPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attempt => "attempt",
            Self::Outcome => "outcome",
        }
    }
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attempted => "attempted",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Deferred => "deferred",
        }
    }
}
