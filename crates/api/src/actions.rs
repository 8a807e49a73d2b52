//! Actions on the queue that clients and operators take through the API,
//! each one unit of work: the queue changes and its audit OUTCOME is
//! appended in one transaction, or neither happens (an action that does not
//! apply writes no audit record). Handlers decide who may act and how an
//! answer reads over HTTP; nothing here knows HTTP.

use dashtam_db::Db;
use dashtam_domain::audit::{AuditAction, AuditEntry, AuditOutcome, AuditPhase};
use dashtam_queue::{JobRecord, QueueError, ops};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// The OUTCOME record of `action` on `resource_type` `resource_id` by
/// `actor` (`user:<sub>` through the API, `cli:<user>` from the console),
/// with the request it came in on if any.
pub fn entry(
    action: AuditAction,
    actor: String,
    resource_type: &'static str,
    resource_id: String,
    correlation_id: Option<String>,
) -> AuditEntry {
    AuditEntry {
        action,
        phase: AuditPhase::Outcome,
        outcome: AuditOutcome::Succeeded,
        actor,
        resource_type,
        resource_id,
        correlation_id,
        reason: None,
        context: serde_json::json!({}),
    }
}

/// Appends `entry` in `tx` and commits both.
async fn commit_with(
    mut tx: Transaction<'_, Postgres>,
    entry: &AuditEntry,
) -> Result<(), QueueError> {
    dashtam_store::audit::append(&mut *tx, entry).await?;
    tx.commit().await?;
    Ok(())
}

/// Cancels job `id` (see [`ops::cancel`]); `None`, and no record, if it
/// had already finished.
pub async fn cancel_job(
    pool: &Db,
    id: Uuid,
    entry: &AuditEntry,
) -> Result<Option<JobRecord>, QueueError> {
    let mut tx = pool.begin().await?;
    let Some(job) = ops::cancel(&mut *tx, id).await? else {
        return Ok(None);
    };
    commit_with(tx, entry).await?;
    Ok(Some(job))
}

/// Runs a dead or cancelled job again (see [`ops::retry`]); recorded only
/// when it was.
pub async fn retry_job(pool: &Db, id: Uuid, entry: &AuditEntry) -> Result<ops::Retry, QueueError> {
    let mut tx = pool.begin().await?;
    let retry = ops::retry(&mut tx, id).await?;
    if matches!(retry, ops::Retry::Retried(_)) {
        commit_with(tx, entry).await?;
    }
    Ok(retry)
}

/// Deletes a finished job; `false`, and no record, if it was not one.
pub async fn discard_job(pool: &Db, id: Uuid, entry: &AuditEntry) -> Result<bool, QueueError> {
    let mut tx = pool.begin().await?;
    if ops::discard(&mut *tx, id).await?.is_none() {
        return Ok(false);
    }
    commit_with(tx, entry).await?;
    Ok(true)
}

/// A queue's name: 1 to 64 letters, digits, `_` or `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueName(String);

impl QueueName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for QueueName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| Self(s.to_owned()))
            .ok_or_else(|| format!("{s:?} is not a queue name (1 to 64 letters, digits, _ or -)"))
    }
}

/// Pauses or resumes `queue` on behalf of `by`.
pub async fn set_queue_paused(
    pool: &Db,
    queue: &QueueName,
    paused: bool,
    by: &str,
    entry: &AuditEntry,
) -> Result<(), QueueError> {
    let mut tx = pool.begin().await?;
    if paused {
        ops::pause(&mut *tx, queue.as_str(), by).await?;
    } else {
        ops::resume(&mut *tx, queue.as_str()).await?;
    }
    commit_with(tx, entry).await
}
