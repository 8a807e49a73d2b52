//! The sync job: page through the provider with no database transaction
//! open, normalize, then commit everything (rows, new cursor, audit OUTCOME
//! and the job's own success) in one short transaction.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashtam_domain::ConnectionId;
use dashtam_domain::audit::{AuditAction, AuditOutcome, AuditPhase};
use dashtam_domain::jobs::SyncJob;
use dashtam_domain::model::{ConnectionStatus, SyncBatch};
use dashtam_domain::ports::{
    LimitScope, ProviderCredentials, ProviderError, TransactionSyncSource, WindowSyncSource,
};
use dashtam_providers::{Providers, Source};
use dashtam_queue::{ArgsHandler, JobContext, JobError};
use dashtam_store::Store;
use dashtam_store::connections::SyncState;
use dashtam_store::sync::{Fence, SyncStats};
use dashtam_telemetry::metrics::METRICS;
use secrecy::SecretString;
use tracing::Instrument as _;
use tracing::{info, warn};

use crate::audit_entry as entry;
use crate::failure::Failure;
use crate::gate::{ProviderGate, Wait};
use crate::tokens::TokenKeeper;

#[derive(Clone, Debug)]
pub struct SyncSettings {
    /// Transactions per provider page (Plaid allows 1–500).
    pub page_size: u32,
    /// How often one attempt restarts after the provider reports a mutation
    /// during pagination before it gives up and retries later.
    pub max_restarts: u32,
    /// Window-style providers: how far before the last synced window's end
    /// the next window starts (late-arriving and changed activity).
    pub window_overlap: Duration,
    /// Window-style providers: how far back the first sync reaches.
    pub initial_history: Duration,
    /// How often one provider call (a page) is retried in place after a
    /// transient error or a short rate limit before the attempt fails.
    pub page_retries: u32,
}

/// The longest `Retry-After` a page waits out in place; a longer one ends
/// the attempt (the job is retried after it, without holding a slot).
const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long a job whose connection is still rate limited after its in-place
/// retries waits, when the provider did not say (Plaid's per-Item limits
/// count per minute).
const CONNECTION_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// Runs one provider call through the provider's gate (see `gate`),
/// retrying it in place (up to `retries` times) on a transient error or a
/// short rate limit: exponential backoff with full jitter from 250 ms (at
/// most 5 s), or the provider's `Retry-After`. One flaky page then costs a
/// page, not the sync attempt and every page fetched before it. While the
/// provider's breaker is open or it asked everyone to wait, the call does
/// not go out: the caller is told to wait ([`Failure`] snoozes the job
/// without spending its attempt); so is a caller whose retries ran out
/// while the breaker opened, or opens a moment later (see
/// `ProviderGate::outage`).
pub(crate) async fn call_provider<T, F, Fut>(
    gate: &ProviderGate,
    provider: &str,
    retries: u32,
    mut call: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let mut tries = 0u32;
    // After waiting out a provider's pause this job received itself, the
    // next call goes straight out (the pause was this job's to wait out).
    let mut waited_out = false;
    loop {
        if !std::mem::take(&mut waited_out) {
            gate.admit(provider).await?;
        }
        let held = gate.spend(provider).await?;
        let result = call().await;
        drop(held);
        gate.record(provider, &result).await;
        let delay = match result {
            Err(ProviderError::Transient(e)) if tries < retries => {
                let cap = (250u64 << tries.min(5)).min(5_000);
                let delay = Duration::from_millis(fastrand::u64(cap / 4..=cap));
                info!(error = %e, ?delay, "provider call failed; retrying it in place");
                delay
            }
            Err(ProviderError::RateLimited { retry_after, scope })
                if tries < retries && retry_after.is_none_or(|d| d <= MAX_INLINE_RETRY_AFTER) =>
            {
                let delay = match scope {
                    LimitScope::Provider => {
                        // The pause it set is this job's to wait out.
                        waited_out = true;
                        retry_after.unwrap_or(Duration::from_secs(1))
                    }
                    // This connection's own limit (Plaid's per-Item ones
                    // count per minute): 1, 2, 4, 8 s.
                    LimitScope::Connection => {
                        retry_after.unwrap_or(Duration::from_secs(1 << tries.min(3)))
                    }
                };
                info!(
                    ?delay,
                    ?scope,
                    "provider rate limited a call; waiting it out in place"
                );
                delay
            }
            Err(ProviderError::RateLimited {
                retry_after,
                scope: LimitScope::Connection,
            }) => {
                // Still limited: this job waits (no attempt spent), the
                // provider's other jobs carry on.
                let after = retry_after.unwrap_or(CONNECTION_LIMIT_WAIT);
                return Err(Wait {
                    until: Utc::now() + chrono::Duration::from_std(after).unwrap_or_default(),
                    reason: "connection_rate_limited",
                }
                .into());
            }
            Err(e @ (ProviderError::Transient(_) | ProviderError::RateLimited { .. })) => {
                // Out of retries, or a long pause: if the provider is down or
                // paused for everyone now, wait for it instead of failing.
                if let Some(wait) = gate.outage(provider).await {
                    return Err(wait.into());
                }
                return Err(e.into());
            }
            other => return other.map_err(Failure::from),
        };
        tries += 1;
        tokio::time::sleep(delay).await;
    }
}

pub struct SyncHandler {
    store: Store,
    providers: Providers,
    tokens: TokenKeeper,
    gate: Arc<ProviderGate>,
    settings: SyncSettings,
}

impl SyncHandler {
    pub fn new(
        store: Store,
        providers: Providers,
        tokens: TokenKeeper,
        gate: Arc<ProviderGate>,
        settings: SyncSettings,
    ) -> Self {
        Self {
            store,
            providers,
            tokens,
            gate,
            settings,
        }
    }
}

#[async_trait]
impl ArgsHandler<SyncJob> for SyncHandler {
    async fn handle(&self, job: SyncJob, ctx: &JobContext) -> Result<(), JobError> {
        let connection = job.connection_id();
        // Two syncs of one connection never overlap: one enqueued while an
        // older one runs (a webhook's follow-up, an API request, the
        // sweep) waits for it, with no attempt and no audit record.
        if ctx
            .older_running(&connection.to_string())
            .await
            .map_err(|e| JobError::retry(e.to_string()))?
        {
            return Err(JobError::Snooze {
                after: Duration::from_secs(2),
                reason: "sync_running".into(),
            });
        }
        // A provider that is down or paused for everyone: wait, without an
        // attempt or an audit record.
        if let Some(provider) = &ctx.throttle_key
            && let Err(wait) = self.gate.admit(provider).await
        {
            return Err(Failure::from(wait).error);
        }
        let attempt = entry(
            AuditAction::SyncAttempted,
            AuditPhase::Attempt,
            AuditOutcome::Attempted,
            connection,
            ctx,
        );
        crate::record_attempt(&self.store, &attempt, AuditAction::SyncFailed)
            .await
            .map_err(|e| JobError::retry(e.to_string()))?;
        match self.sync(ctx, connection).await {
            Ok(()) => Ok(()),
            Err(Failure { error, reason, .. }) => {
                let (action, result) = match &error {
                    JobError::Snooze { .. } => (AuditAction::SyncDeferred, AuditOutcome::Deferred),
                    _ => (AuditAction::SyncFailed, AuditOutcome::Failed),
                };
                let mut outcome = entry(action, AuditPhase::Outcome, result, connection, ctx);
                outcome.reason = Some(reason);
                outcome.context["will_retry"] = matches!(error, JobError::Retry { .. }).into();
                crate::record_outcome(&self.store, &outcome).await;
                Err(error)
            }
        }
    }
}

/// Where a pass stands: every row the provider returned so far (held in
/// memory: no transaction is open while the provider is called), and
/// counters for progress.
struct Pass {
    batch: SyncBatch,
    pages: u64,
    restarts: u32,
}

/// The job's own success, written last in the sync's transaction.
struct JobFence<'a> {
    ctx: &'a JobContext,
    pages: u64,
    restarts: u32,
    accounts: usize,
}

#[async_trait]
impl Fence for JobFence<'_> {
    async fn complete_in(
        &self,
        conn: &mut sqlx::PgConnection,
        stats: &SyncStats,
    ) -> Result<bool, sqlx::Error> {
        let progress = serde_json::json!({
            "pages": self.pages,
            "transactions": stats.received,
            "upserted": stats.upserted,
            "removed": stats.removed,
            "accounts": self.accounts,
            "restarts": self.restarts,
            "committed": true,
        });
        self.ctx.complete_in(conn, Some(&progress)).await
    }
}

impl SyncHandler {
    async fn sync(&self, ctx: &JobContext, connection: ConnectionId) -> Result<(), Failure> {
        let state = self
            .store
            .sync_state(connection)
            .await?
            .ok_or_else(|| Failure::permanent("the connection no longer exists"))?;
        Failure::unless_active(state.status)?;
        let source = self.providers.source(state.provider).ok_or_else(|| {
            Failure::permanent(format!(
                "provider {} is not configured",
                state.provider.as_str()
            ))
        })?;
        let started = std::time::Instant::now();
        let provider = state.provider.as_str();
        let state_cursor = state.cursor.clone();
        let pass = match source {
            Source::Cursor(source) => self.cursor_pass(ctx, &state, &*source).await,
            Source::Window(source) => self.window_pass(ctx, connection, state, &*source).await,
        };
        let pass = match pass {
            // The pass's transaction is gone by now; nothing waits on us.
            Err(failure) if failure.reauth => {
                self.store
                    .set_connection_status(connection, ConnectionStatus::ReauthRequired)
                    .await?;
                return Err(failure);
            }
            other => other?,
        };

        let Pass {
            mut batch,
            pages,
            restarts,
        } = pass;
        let outcome = entry(
            AuditAction::SyncSucceeded,
            AuditPhase::Outcome,
            AuditOutcome::Succeeded,
            connection,
            ctx,
        );
        let fence = JobFence {
            ctx,
            pages,
            restarts,
            accounts: batch.accounts.len(),
        };
        let stats = self
            .store
            .commit_sync(
                connection,
                state_cursor.as_deref(),
                &mut batch,
                &outcome,
                &fence,
            )
            .instrument(tracing::info_span!(
                "commit",
                pages,
                accounts = fence.accounts
            ))
            .await?;
        METRICS
            .transactions_ingested
            .with_label_values(&[provider])
            .inc_by(stats.received);
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

    /// Records progress after a page; stops (dropping everything
    /// uncommitted) if cancellation was requested.
    async fn page_done(&self, ctx: &JobContext, pass: &Pass) -> Result<(), Failure> {
        let progress = serde_json::json!({
            "pages": pass.pages,
            "transactions": pass.batch.upserts.len(),
            "removed": pass.batch.removed.len(),
            "restarts": pass.restarts,
        });
        match ctx.set_progress(&progress).await {
            Ok(true) => Err(Failure::cancelled()),
            Ok(false) => Ok(()),
            Err(e) => {
                warn!(error = %e, "could not record progress");
                Ok(())
            }
        }
    }

    /// Cursor style: page until `has_more` is false, restarting from the
    /// starting cursor when the provider reports a mutation.
    async fn cursor_pass(
        &self,
        ctx: &JobContext,
        state: &SyncState,
        source: &dyn TransactionSyncSource,
    ) -> Result<Pass, Failure> {
        let started_from = state.cursor.as_deref();
        let mut restarts = 0;
        'restart: loop {
            // Everything this pass collects is written at the end; a restart
            // or a failure drops it.
            let mut pass = Pass {
                batch: SyncBatch::default(),
                pages: 0,
                restarts,
            };
            let mut cursor = started_from.map(str::to_owned);
            loop {
                let page = call_provider(
                    &self.gate,
                    state.provider.as_str(),
                    self.settings.page_retries,
                    || {
                        source.sync_page(
                            &state.credentials,
                            cursor.as_deref(),
                            self.settings.page_size,
                        )
                    },
                )
                .await;
                let page = match page {
                    Ok(p) => p,
                    Err(f) if f.mutation && restarts < self.settings.max_restarts => {
                        restarts += 1;
                        info!(
                            restarts,
                            "provider data changed during pagination; restarting"
                        );
                        continue 'restart;
                    }
                    Err(f) => return Err(f),
                };
                pass.pages += 1;
                let has_more = page.has_more;
                cursor = Some(page.next_cursor.clone());
                pass.batch.absorb(page);
                self.page_done(ctx, &pass).await?;
                if !has_more {
                    // A page lists only the accounts its transactions
                    // belong to: every account's balances come from
                    // `/accounts/get`, committed with the pages.
                    let accounts = call_provider(
                        &self.gate,
                        state.provider.as_str(),
                        self.settings.page_retries,
                        || source.accounts(&state.credentials),
                    )
                    .await?;
                    pass.batch.absorb_accounts(accounts);
                    return Ok(pass);
                }
            }
        }
    }

    /// Window style: every account's activity from the last synced window's
    /// end (less an overlap) to now, in windows the provider accepts. The
    /// new cursor is the window's end; duplicates from the overlap are
    /// upserts of the same `activityId`.
    async fn window_pass(
        &self,
        ctx: &JobContext,
        connection: ConnectionId,
        state: SyncState,
        source: &dyn WindowSyncSource,
    ) -> Result<Pass, Failure> {
        let mut token = Tokens {
            gate: &self.gate,
            provider: state.provider.as_str(),
            retries: self.settings.page_retries,
            keeper: &self.tokens,
            ctx,
            connection,
            credentials: state.credentials,
            version: state.credentials_version,
        };
        let margin = chrono::Duration::from_std(self.tokens.expiry_margin()).unwrap_or_default();
        if state
            .access_token_expires_at
            .is_some_and(|at| at - Utc::now() < margin)
        {
            token.refresh().await?;
        }
        let end = Utc::now();
        let overlap = chrono::Duration::from_std(self.settings.window_overlap).unwrap_or_default();
        let first =
            end - chrono::Duration::from_std(self.settings.initial_history).unwrap_or_default();
        let start = match state.cursor.as_deref() {
            Some(c) => {
                DateTime::parse_from_rfc3339(c)
                    .map_err(|_| {
                        Failure::permanent(format!("stored window cursor {c:?} is not a time"))
                    })?
                    .with_timezone(&Utc)
                    - overlap
            }
            None => first,
        }
        .max(first);

        let accounts = token
            .call(|t| async move { source.accounts(&t).await })
            .await?;
        let mut pass = Pass {
            batch: SyncBatch {
                accounts: accounts.clone(),
                ..SyncBatch::default()
            },
            pages: 0,
            restarts: 0,
        };
        for account in &accounts {
            let mut from = start;
            while from < end {
                let to = (from + source.max_window() - chrono::Duration::seconds(1)).min(end);
                let id = account.provider_account_id.as_str();
                let rows = token
                    .call(|t| async move { source.transactions(&t, id, from, to).await })
                    .await?;
                pass.pages += 1;
                pass.batch.upserts.extend(rows);
                self.page_done(ctx, &pass).await?;
                from = to + chrono::Duration::milliseconds(1);
            }
        }
        pass.batch.next_cursor = Some(end.to_rfc3339());
        Ok(pass)
    }
}

/// The access token a window-style sync uses, refreshed through the
/// single-flight path when it expires mid-run.
struct Tokens<'a> {
    gate: &'a ProviderGate,
    provider: &'a str,
    retries: u32,
    keeper: &'a TokenKeeper,
    ctx: &'a JobContext,
    connection: ConnectionId,
    credentials: ProviderCredentials,
    version: i64,
}

impl Tokens<'_> {
    async fn refresh(&mut self) -> Result<(), Failure> {
        let fresh = self
            .keeper
            .fresh(self.ctx, self.connection, Some(self.version))
            .await?;
        self.credentials = fresh.credentials;
        self.version = fresh.version;
        Ok(())
    }

    /// Runs `f` with the access token (retrying it in place on transient
    /// errors); on a 401 refreshes once and runs it again.
    async fn call<T, F, Fut>(&mut self, f: F) -> Result<T, Failure>
    where
        F: Fn(SecretString) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let token = self.credentials.access_token.clone();
        match call_provider(self.gate, self.provider, self.retries, || f(token.clone())).await {
            Err(failure) if failure.token_expired => {
                info!("access token expired mid-sync; refreshing");
                self.refresh().await?;
                let token = self.credentials.access_token.clone();
                call_provider(self.gate, self.provider, self.retries, || f(token.clone())).await
            }
            other => other,
        }
    }
}
