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
