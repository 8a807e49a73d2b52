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
