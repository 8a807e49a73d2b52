//! Job handlers: what the worker pool runs for each job kind.
//!
//! Architecture invariant: handlers reach the database only through `store`
//! (domain tables) and the `JobContext` (their own job row), and providers
//! only through the domain ports. Token refreshes go through
//! [`TokenKeeper`] and nowhere else.

pub mod budget;
mod failure;
pub mod gate;
mod sync;
mod tokens;

pub use sync::{SyncHandler, SyncSettings};
pub use tokens::{RefreshHandler, TokenKeeper, TokenSettings};

use async_trait::async_trait;
use dashtam_domain::ConnectionId;
use dashtam_domain::audit::{AuditAction, AuditEntry, AuditOutcome, AuditPhase};
use dashtam_queue::{AbandonHook, AbandonedJob, JobContext};
use dashtam_store::audit::{Abandoned, close_abandoned};

/// Closes the audit trail's open ATTEMPT of every job attempt the queue
/// takes from its worker (rescued, handed back, released) with an
/// `abandoned` OUTCOME, in the transaction that takes the job.
pub struct AuditAbandoned;

#[async_trait]
impl AbandonHook for AuditAbandoned {
    async fn abandoned(
        &self,
        conn: &mut sqlx::PgConnection,
        jobs: &[AbandonedJob],
    ) -> Result<(), sqlx::Error> {
        let attempts: Vec<Abandoned<'_>> = jobs
            .iter()
            .map(|j| Abandoned {
                job_id: j.id.to_string(),
                attempt: j.attempt,
                reason: &j.reason,
            })
            .collect();
        close_abandoned(conn, &attempts).await.map(drop)
    }
}

/// How long a failed attempt's OUTCOME keeps being retried while the
/// database cannot take it (a Postgres restart takes seconds).
const OUTCOME_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes the OUTCOME of a failed or deferred attempt, retrying while the
/// database is unreachable: the failure is often the database itself (a
/// crash mid-sync), and an OUTCOME dropped then would leave the attempt's
/// ATTEMPT open for good. The job's slot waits meanwhile; nothing else
/// could run without the database anyway.
async fn record_outcome(store: &dashtam_store::Store, outcome: &AuditEntry) {
    let deadline = tokio::time::Instant::now() + OUTCOME_PATIENCE;
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        match store.audit(outcome).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::info!(error = %e, ?pause, "could not record the attempt's audit outcome yet; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record the attempt's audit outcome");
                return;
            }
        }
    }
}

/// Writes an attempt's ATTEMPT record. When the write fails the record may
/// still have committed (Postgres crashed between the commit and its
/// answer), so the attempt's OUTCOME (`failed`, will retry) is written too,
/// with the same patience as any OUTCOME: no ATTEMPT stays open. (If the
/// ATTEMPT did not commit, the OUTCOME stands alone, saying why.)
async fn record_attempt(
    store: &dashtam_store::Store,
    attempt: &AuditEntry,
    failed: AuditAction,
) -> Result<(), dashtam_store::StoreError> {
    let Err(e) = store.audit(attempt).await else {
        return Ok(());
    };
    let mut outcome = attempt.clone();
    outcome.action = failed;
    outcome.phase = AuditPhase::Outcome;
    outcome.outcome = AuditOutcome::Failed;
    outcome.reason = Some(format!("the attempt could not be recorded: {e}"));
    outcome.context["will_retry"] = true.into();
    record_outcome(store, &outcome).await;
    Err(e)
}

/// An audit record about `connection`, written by the job in `ctx`.
fn audit_entry(
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
        context: serde_json::json!({ "job_id": ctx.id, "attempt": ctx.attempt, "job_kind": ctx.kind }),
    }
}
