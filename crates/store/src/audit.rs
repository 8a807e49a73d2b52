//! Appending to the audit trail (the only operation it allows).

use dashtam_domain::audit::AuditEntry;
use sqlx::PgExecutor;

use crate::{Store, StoreError};

/// Appends one record on `exec`: a transaction, to commit it with the
/// change it describes.
pub async fn append<'e>(exec: impl PgExecutor<'e>, entry: &AuditEntry) -> Result<(), sqlx::Error> {
    sqlx::query(include_str!("../queries/insert_audit.sql"))
        .bind(entry.action.as_str())
        .bind(entry.phase.as_str())
        .bind(entry.outcome.as_str())
        .bind(&entry.actor)
        .bind(entry.resource_type)
        .bind(&entry.resource_id)
        .bind(&entry.correlation_id)
        .bind(&entry.reason)
        .bind(&entry.context)
        .execute(exec)
        .await?;
    Ok(())
}

impl Store {
    /// Appends one record in its own transaction (ATTEMPT records, and
    /// OUTCOME records of work that wrote nothing).
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        append(&self.pool, entry).await?;
        Ok(())
    }
}

/// An attempt of a job that was taken from its worker without an outcome.
pub struct Abandoned<'a> {
    pub job_id: String,
    pub attempt: i32,
    pub reason: &'a str,
}

/// Closes the open ATTEMPT records of abandoned job attempts with an
/// `abandoned` OUTCOME, on `conn`: the transaction that takes the jobs from
/// their worker. Returns how many records were written.
pub async fn close_abandoned(
    conn: &mut sqlx::PgConnection,
    attempts: &[Abandoned<'_>],
) -> Result<u64, sqlx::Error> {
    if attempts.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(include_str!("../queries/close_abandoned.sql"))
        .bind(
            attempts
                .iter()
                .map(|a| a.job_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.reason).collect::<Vec<_>>())
        .execute(conn)
        .await?
        .rows_affected())
}
