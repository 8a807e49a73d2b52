//! Keeping access tokens fresh: one single-flight path for every trigger
//! (the `token_refresh` job, a sync about to start with an expiring token, a
//! sync that got a 401 mid-run).
//!
//! The token lease taken by [`Store::lease_credentials`] makes the refresh
//! single-flight across every daemon: a trigger says which credentials
//! version it found stale, and once it holds the lease it calls the
//! provider only if that is still the newest version. With rotating refresh
//! tokens this is what keeps two refreshers from burning the grant. The
//! lease is a row lease, not a transaction: nothing stays open in the
//! database while the provider answers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use dashtam_domain::ConnectionId;
use dashtam_domain::audit::{AuditAction, AuditOutcome, AuditPhase};
use dashtam_domain::jobs::TokenRefreshJob;
use dashtam_domain::ports::{ProviderCredentials, ProviderError};
use dashtam_providers::{Providers, Source};
use dashtam_queue::{ArgsHandler, JobContext, JobError};
use dashtam_store::{CredentialLease, Store};
use dashtam_telemetry::metrics::METRICS;
use secrecy::ExposeSecret;
use tracing::{info, warn};

use crate::audit_entry;
use crate::failure::Failure;
use crate::gate::ProviderGate;

#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// The `token_refresh` job (and the scheduler's sweep) refreshes tokens
    /// expiring within this.
    pub refresh_lead: Duration,
    /// A sync refreshes first if its token expires within this.
    pub expiry_margin: Duration,
    /// How long a token lease lasts if its holder vanishes (longer than
    /// any provider call).
    pub lease: Duration,
}

/// Fresh credentials and their version.
pub(crate) struct Fresh {
    pub credentials: ProviderCredentials,
    pub version: i64,
}

#[derive(Clone)]
pub struct TokenKeeper {
    store: Store,
    providers: Providers,
    gate: Arc<ProviderGate>,
    settings: TokenSettings,
}

impl TokenKeeper {
    pub fn new(
        store: Store,
        providers: Providers,
        gate: Arc<ProviderGate>,
        settings: TokenSettings,
    ) -> Self {
        Self {
            store,
            providers,
            gate,
            settings,
        }
    }

    pub(crate) fn expiry_margin(&self) -> Duration {
        self.settings.expiry_margin
    }

    /// Credentials newer than `stale_version` (or, with `None`, an access
    /// token good for longer than the lead time), refreshing them if nobody
    /// else has.
    pub(crate) async fn fresh(
        &self,
        ctx: &JobContext,
        connection: ConnectionId,
        stale_version: Option<i64>,
    ) -> Result<Fresh, Failure> {
        let lease = self
            .store
            .lease_credentials(connection, self.settings.lease)
            .await?
            .ok_or_else(|| Failure::permanent("the connection no longer exists"))?;
        Failure::unless_active(lease.status)?;
        let Some(credentials) = lease.credentials.clone() else {
            return Err(Failure::permanent("the connection has no credentials"));
        };
        let needed = match stale_version {
            Some(v) => lease.version <= v,
            None => lease.access_token_expires_at.is_some_and(|at| {
                at - Utc::now()
                    < chrono::Duration::from_std(self.settings.refresh_lead).unwrap_or_default()
            }),
        };
        let provider = lease.provider.as_str();
        let source = self.providers.source(lease.provider);
        let Some(Source::Window(source)) = source.filter(|_| needed) else {
            // Fresh already (someone else refreshed), or a provider whose
            // tokens do not expire.
            let version = lease.version;
            lease.release().await?;
            METRICS
                .token_refreshes
                .with_label_values(&[provider, "skipped"])
                .inc();
            return Ok(Fresh {
                credentials,
                version,
            });
        };
        // The provider is down, paused for everyone or out of budget: wait,
        // without a call.
        let held = match self.gate.admit(provider).await {
            Ok(()) => self.gate.spend(provider).await,
            Err(wait) => Err(wait),
        };
        let _held = match held {
            Ok(h) => h,
            Err(wait) => {
                lease.release().await?;
                return Err(wait.into());
            }
        };
        let Some(refresh_token) = credentials.refresh_token.clone() else {
            return Err(self
                .reauth(ctx, lease, "the connection has no refresh token".into())
                .await);
        };
        let attempt = audit_entry(
            AuditAction::TokenRefreshAttempted,
            AuditPhase::Attempt,
            AuditOutcome::Attempted,
            connection,
            ctx,
        );
        crate::record_attempt(&self.store, &attempt, AuditAction::TokenRefreshFailed).await?;
        let refreshed = source.refresh(&refresh_token).await;
        self.gate.record(provider, &refreshed).await;
        match refreshed {
            Ok(grant) => {
                let rotation = match &grant.refresh_token {
                    None => "kept",
                    Some(new) if new.expose_secret() == refresh_token.expose_secret() => "same",
                    Some(_) => "rotated",
                };
                let credentials = ProviderCredentials {
                    access_token: grant.access_token,
                    refresh_token: grant.refresh_token.or(Some(refresh_token)),
                };
                let expires_at = Utc::now()
                    + chrono::Duration::from_std(grant.access_expires_in).unwrap_or_default();
                let mut outcome = audit_entry(
                    AuditAction::TokenRefreshSucceeded,
                    AuditPhase::Outcome,
                    AuditOutcome::Succeeded,
                    connection,
                    ctx,
                );
                outcome.context["refresh_token"] = rotation.into();
                outcome.context["access_token_expires_at"] = expires_at.to_rfc3339().into();
                let version = lease
                    .store(&credentials, Some(expires_at), &outcome)
                    .await?;
                METRICS
                    .token_refreshes
                    .with_label_values(&[provider, "refreshed"])
                    .inc();
                info!(version, refresh_token = rotation, "access token refreshed");
                Ok(Fresh {
                    credentials,
                    version,
                })
            }
            Err(ProviderError::Unauthorized(reason)) => Err(self.reauth(ctx, lease, reason).await),
            Err(e) => {
                lease.release().await?;
                // In an outage (or a pause for everyone) the refresh waits
                // for the provider instead of spending its attempt.
                let outage = match &e {
                    ProviderError::Transient(_) | ProviderError::RateLimited { .. } => {
                        self.gate.outage(provider).await
                    }
                    _ => None,
                };
                let (failure, action, result, counted) = match outage {
                    Some(wait) => (
                        Failure::from(wait),
                        AuditAction::TokenRefreshDeferred,
                        AuditOutcome::Deferred,
                        "deferred",
                    ),
                    None => (
                        Failure::from(e),
                        AuditAction::TokenRefreshFailed,
                        AuditOutcome::Failed,
                        "failed",
                    ),
                };
                let mut outcome = audit_entry(action, AuditPhase::Outcome, result, connection, ctx);
                outcome.reason = Some(failure.reason.clone());
                outcome.context["will_retry"] = failure.will_retry().into();
                crate::record_outcome(&self.store, &outcome).await;
                METRICS
                    .token_refreshes
                    .with_label_values(&[provider, counted])
                    .inc();
                Err(failure)
            }
        }
    }

    /// The refresh token is dead: mark the connection, audit, no retries.
    async fn reauth(&self, ctx: &JobContext, lease: CredentialLease, reason: String) -> Failure {
        let provider = lease.provider.as_str();
        let mut outcome = audit_entry(
            AuditAction::ReauthRequired,
            AuditPhase::Outcome,
            AuditOutcome::Failed,
            lease.connection(),
            ctx,
        );
        outcome.reason = Some(reason.clone());
        if let Err(e) = lease.require_reauth(&outcome).await {
            return e.into();
        }
        METRICS
            .token_refreshes
            .with_label_values(&[provider, "reauth_required"])
            .inc();
        warn!("the provider refused the refresh token; the connection needs re-authorization");
        Failure::permanent(format!("the user must re-authorize: {reason}"))
    }
}

/// The `token_refresh` job.
pub struct RefreshHandler {
    keeper: TokenKeeper,
}

impl RefreshHandler {
    pub fn new(keeper: TokenKeeper) -> Self {
        Self { keeper }
    }
}

#[async_trait]
impl ArgsHandler<TokenRefreshJob> for RefreshHandler {
    async fn handle(&self, job: TokenRefreshJob, ctx: &JobContext) -> Result<(), JobError> {
        let connection = job.connection_id();
        self.keeper
            .fresh(ctx, connection, job.stale_version())
            .await
            .map(drop)
            .map_err(|f| f.error)
    }
}
