//! Appending to the audit trail (the only operation it allows).

use dashtam_domain::audit::AuditEntry;
use sqlx::PgExecutor;

use crate::{Store, StoreError};

/// Appends one record on `exec`: a transaction, to commit it with the
/// change it describes.
pub async fn append<'e>(exec: impl PgExecutor<'e>, entry: &AuditEntry) -> Result<(), sqlx::Error> {
    sqlx::query_file!(
        "queries/insert_audit.sql",
        entry.action.as_str(),
        entry.phase.as_str(),
        entry.outcome.as_str(),
        entry.actor,
        entry.resource_type,
        entry.resource_id,
        entry.correlation_id,
        entry.reason,
        entry.context,
    )
    .execute(exec)
    .await?;
    Ok(())
}

/// One record of the audit trail, as written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub action: String,
    pub phase: String,
    pub outcome: String,
    pub actor: String,
    pub resource_type: String,
    pub resource_id: String,
    pub correlation_id: Option<String>,
    pub reason: Option<String>,
    pub context: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl Store {
    /// The audit trail of job `job_id` (its runs' records and the actions
    /// on it), oldest first, at most `limit` records.
    pub async fn job_audit(
        &self,
        job_id: &str,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(
            sqlx::query_file_as!(AuditRecord, "queries/job_audit.sql", job_id, limit)
                .fetch_all(&self.pool)
                .await?,
        )
    }

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
    let jobs: Vec<&str> = attempts.iter().map(|a| a.job_id.as_str()).collect();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
    let reasons: Vec<&str> = attempts.iter().map(|a| a.reason).collect();
    Ok(sqlx::query_file!(
        "queries/close_abandoned.sql",
        &jobs as _,
        &numbers,
        &reasons as _
    )
    .execute(conn)
    .await?
    .rows_affected())
}
