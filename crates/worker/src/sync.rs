//! The sync job: page through the provider, normalize, commit everything
//! (rows, new cursor, audit OUTCOME) in one transaction.

use std::time::Duration;

use async_trait::async_trait;
use dashtam_domain::ConnectionId;
use dashtam_domain::audit::{AuditAction, AuditEntry, AuditOutcome, AuditPhase};
use dashtam_domain::jobs::SyncJob;
use dashtam_domain::model::{ConnectionStatus, SyncBatch};
use dashtam_domain::ports::ProviderError;
use dashtam_providers::Providers;
use dashtam_queue::{Handler, JobContext, JobError};
use dashtam_store::{Store, StoreError};
use dashtam_telemetry::metrics::METRICS;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct SyncSettings {
    /// Transactions per provider page (Plaid allows 1–500).
    pub page_size: u32,
    /// Collected rows written per bulk statement round (inside the sync's
    /// transaction, so nothing is visible before the cursor moves).
    pub write_batch: usize,
    /// How often one attempt restarts after the provider reports a mutation
    /// during pagination before it gives up and retries later.
    pub max_restarts: u32,
}

pub struct SyncHandler {
    store: Store,
    providers: Providers,
    settings: SyncSettings,
}

impl SyncHandler {
    pub fn new(store: Store, providers: Providers, settings: SyncSettings) -> Self {
        Self {
            store,
            providers,
            settings,
        }
    }
}

/// Why an attempt failed: what to tell the queue and the audit trail.
struct Failure {
    error: JobError,
    reason: String,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let reason = e.to_string();
        let error = match e {
            StoreError::Db(_) | StoreError::Conflict(_) => JobError::retry(reason.clone()),
            StoreError::Crypto(_) | StoreError::Corrupt(_) => JobError::permanent(reason.clone()),
        };
        Failure { error, reason }
    }
}

fn provider_failure(e: ProviderError) -> Failure {
    let reason = e.to_string();
    let error = match e {
        ProviderError::Transient(_) | ProviderError::MutationDuringPagination => {
            JobError::retry(reason.clone())
        }
        ProviderError::RateLimited { retry_after } => JobError::Retry {
            message: reason.clone(),
            after: Some(retry_after.unwrap_or(Duration::from_secs(30))),
        },
        ProviderError::Unauthorized(_) | ProviderError::Permanent(_) => {
            JobError::permanent(reason.clone())
        }
    };
    Failure { error, reason }
}

fn entry(
    action: AuditAction,
    phase: AuditPhase,
    outcome: AuditOutcome,
    connection: ConnectionId,
    ctx: &JobContext,
) -> AuditEntry {
    AuditEntry {
        action,
        phase,
        outcome,
        actor: "system:worker".into(),
        resource_type: "connection",
        resource_id: connection.to_string(),
        correlation_id: Some(ctx.id.to_string()),
        reason: None,
        context: serde_json::json!({ "job_id": ctx.id, "attempt": ctx.attempt }),
    }
}

#[async_trait]
impl Handler for SyncHandler {
    async fn handle(&self, ctx: &JobContext) -> Result<(), JobError> {
        let job: SyncJob = serde_json::from_value(ctx.payload.clone())
            .map_err(|e| JobError::permanent(format!("sync job payload does not parse: {e}")))?;
        let connection = job.connection_id();
        tracing::Span::current().record("connection_id", tracing::field::display(connection));
        self.store
            .audit(&entry(
                AuditAction::SyncAttempted,
                AuditPhase::Attempt,
                AuditOutcome::Attempted,
                connection,
                ctx,
            ))
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        match self.sync(ctx, connection).await {
            Ok(()) => Ok(()),
            Err(Failure { error, reason }) => {
                let mut outcome = entry(
                    AuditAction::SyncFailed,
                    AuditPhase::Outcome,
                    AuditOutcome::Failed,
                    connection,
                    ctx,
                );
                outcome.reason = Some(reason);
                outcome.context["will_retry"] = matches!(error, JobError::Retry { .. }).into();
                if let Err(e) = self.store.audit(&outcome).await {
                    warn!(error = %e, "could not record the failed sync's audit outcome");
                }
                Err(error)
            }
        }
    }
}

impl SyncHandler {
    async fn sync(&self, ctx: &JobContext, connection: ConnectionId) -> Result<(), Failure> {
        let state = self
            .store
            .sync_state(connection)
            .await?
            .ok_or_else(|| Failure {
                error: JobError::permanent("the connection no longer exists"),
                reason: "the connection no longer exists".into(),
            })?;
        if !state.status.can_sync() {
            let reason = format!("the connection is {}, not active", state.status.as_str());
            return Err(Failure {
                error: JobError::permanent(reason.clone()),
                reason,
            });
        }
        let source = self.providers.sync_source(state.provider).ok_or_else(|| {
            let reason = format!("provider {} is not configured", state.provider.as_str());
            Failure {
                error: JobError::permanent(reason.clone()),
                reason,
            }
        })?;

        let started_from = state.cursor.as_deref();
        let started = std::time::Instant::now();
        let mut restarts = 0;
        let (tx, batch, pages) = 'restart: loop {
            // Everything this pass writes lives in one transaction; a restart
            // or a failure drops it, which rolls it all back.
            let mut tx = self.store.begin_sync(connection, started_from).await?;
            let mut batch = SyncBatch::default();
            let mut cursor = started_from.map(str::to_owned);
            let mut pages = 0u64;
            loop {
                let page = match source
                    .sync_page(
                        &state.credentials,
                        cursor.as_deref(),
                        self.settings.page_size,
                    )
                    .await
                {
                    Ok(p) => p,
                    Err(ProviderError::MutationDuringPagination)
                        if restarts < self.settings.max_restarts =>
                    {
                        restarts += 1;
                        info!(
                            restarts,
                            "provider data changed during pagination; restarting"
                        );
                        continue 'restart;
                    }
                    Err(e @ ProviderError::Unauthorized(_)) => {
                        drop(tx);
                        self.store
                            .set_connection_status(connection, ConnectionStatus::ReauthRequired)
                            .await?;
                        return Err(provider_failure(e));
                    }
                    Err(e) => return Err(provider_failure(e)),
                };
                pages += 1;
                let has_more = page.has_more;
                cursor = Some(page.next_cursor.clone());
                batch.absorb(page);
                if batch.pending_rows() >= self.settings.write_batch || !has_more {
                    tx.write(&mut batch).await?;
                }
                let stats = tx.stats();
                let progress = serde_json::json!({
                    "pages": pages,
                    "transactions": stats.received as usize + batch.upserts.len(),
                    "removed": stats.removed as usize + batch.removed.len(),
                    "restarts": restarts,
                });
                match ctx.set_progress(&progress).await {
                    // Stop at this page boundary; dropping the transaction
                    // discards everything written so far.
                    Ok(true) => {
                        drop(tx);
                        return Err(Failure {
                            error: JobError::Cancelled,
                            reason: "cancelled on request".into(),
                        });
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "could not record progress"),
                }
                if !has_more {
                    break 'restart (tx, batch, pages);
                }
            }
        };

        let outcome = entry(
            AuditAction::SyncSucceeded,
            AuditPhase::Outcome,
            AuditOutcome::Succeeded,
            connection,
            ctx,
        );
        let stats = tx.commit(batch.next_cursor.as_deref(), &outcome).await?;
        METRICS
            .transactions_ingested
            .with_label_values(&[state.provider.as_str()])
            .inc_by(stats.received);
        let progress = serde_json::json!({
            "pages": pages,
            "transactions": stats.received,
            "upserted": stats.upserted,
            "removed": stats.removed,
            "accounts": batch.accounts.len(),
            "restarts": restarts,
            "committed": true,
        });
        if let Err(e) = ctx.set_progress(&progress).await {
            warn!(error = %e, "could not record progress");
        }
        info!(
            pages,
            received = stats.received,
            upserted = stats.upserted,
            removed = stats.removed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sync committed"
        );
        Ok(())
    }
}
