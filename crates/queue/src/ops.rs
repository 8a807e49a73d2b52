//! Operator actions on jobs and queues. Each takes an executor, so the
//! caller can commit it together with its audit record.

use dashtam_db::Db;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::{JobRecord, JobState, QueueError, Retention};

/// Cancels a pending job at once, or asks a running one to stop at its next
/// checkpoint. `None` if the job does not exist or already finished.
pub async fn cancel<'e>(
    exec: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<JobRecord>, QueueError> {
    Ok(sqlx::query_file_as!(JobRecord, "queries/cancel.sql", id)
        .fetch_optional(exec)
        .await?)
}

/// What [`retry`] did.
#[derive(Debug)]
pub enum Retry {
    /// Available again.
    Retried(Box<JobRecord>),
    /// The job does not exist or is not dead or cancelled.
    NotRetryable,
    /// Another pending or running job holds the job's unique key (the
    /// scheduler enqueued a newer one, say); `None` if it appeared while
    /// we retried.
    KeyHeldBy(Option<Uuid>),
}

/// Makes a dead or cancelled job available again, unless another job holds
/// its unique key.
pub async fn retry(conn: &mut sqlx::PgConnection, id: Uuid) -> Result<Retry, QueueError> {
    let holder = sqlx::query_file_scalar!("queries/retry_key_holder.sql", id)
        .fetch_optional(&mut *conn)
        .await?;
    if holder.is_some() {
        return Ok(Retry::KeyHeldBy(holder));
    }
    match sqlx::query_file_as!(JobRecord, "queries/retry.sql", id)
        .fetch_optional(&mut *conn)
        .await
    {
        Ok(Some(job)) => Ok(Retry::Retried(Box::new(job))),
        Ok(None) => Ok(Retry::NotRetryable),
        // A job holding the key was enqueued meanwhile.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
            Ok(Retry::KeyHeldBy(None))
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes a finished job. `None` if it does not exist or has not finished.
pub async fn discard<'e>(
    exec: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<JobRecord>, QueueError> {
    Ok(sqlx::query_file_as!(JobRecord, "queries/discard.sql", id)
        .fetch_optional(exec)
        .await?)
}

/// Snoozes every pending job of `throttle_key` due before `until` until
/// then, with `waiting` saying why (no attempt spent). Returns how many.
pub async fn snooze_pending<'e>(
    exec: impl PgExecutor<'e>,
    throttle_key: &str,
    until: chrono::DateTime<chrono::Utc>,
    waiting: &serde_json::Value,
) -> Result<u64, QueueError> {
    Ok(
        sqlx::query_file!("queries/snooze_pending.sql", throttle_key, until, waiting)
            .execute(exec)
            .await?
            .rows_affected(),
    )
}

/// Makes the jobs snoozed for `throttle_key` due now, and wakes their
/// workers. Returns how many.
pub async fn wake_snoozed(pool: &Db, throttle_key: &str) -> Result<u64, QueueError> {
    let mut tx = pool.begin().await?;
    let queues = sqlx::query_file_scalar!("queries/wake_snoozed.sql", throttle_key)
        .fetch_all(&mut *tx)
        .await?;
    crate::worker::notify(&mut tx, queues.iter().map(String::as_str)).await?;
    tx.commit().await?;
    Ok(queues.len() as u64)
}

/// Pending jobs snoozed for each throttle key.
pub async fn snoozed_counts(pool: &Db) -> Result<Vec<(String, i64)>, QueueError> {
    Ok(sqlx::query_file!("queries/snoozed_counts.sql")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| (r.throttle_key, r.jobs))
        .collect())
}

/// Stops workers claiming from `queue` (running jobs carry on).
pub async fn pause<'e>(exec: impl PgExecutor<'e>, queue: &str, by: &str) -> Result<(), QueueError> {
    sqlx::query_file!("queries/pause.sql", queue, by)
        .execute(exec)
        .await?;
    Ok(())
}

/// Lets workers claim from `queue` again, and wakes them.
pub async fn resume<'e>(exec: impl PgExecutor<'e>, queue: &str) -> Result<(), QueueError> {
    sqlx::query_file!("queries/resume.sql", queue)
        .fetch_all(exec)
        .await?;
    Ok(())
}

/// Jobs per queue and state, and which queues are paused.
#[derive(Clone, Debug, Default)]
pub struct QueueStats {
    pub queue: String,
    pub paused: bool,
    pub states: std::collections::BTreeMap<String, i64>,
}

/// What the queue-depth gauges show.
#[derive(Clone, Debug, Default)]
pub struct Depth {
    /// (queue, state, jobs) for the unfinished states.
    pub jobs: Vec<(String, String, i64)>,
    /// (queue, seconds) the oldest runnable job has waited.
    pub oldest_available: Vec<(String, f64)>,
}

pub async fn depth(pool: &Db) -> Result<Depth, QueueError> {
    Ok(Depth {
        jobs: sqlx::query_file!("queries/depth.sql")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| (r.queue, r.state, r.jobs))
            .collect(),
        oldest_available: sqlx::query_file!("queries/oldest_available.sql")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| (r.queue, r.waited_secs))
            .collect(),
    })
}

pub async fn stats(pool: &Db) -> Result<Vec<QueueStats>, QueueError> {
    let counts = sqlx::query_file!("queries/queue_state_counts.sql")
        .fetch_all(pool)
        .await?;
    let paused = sqlx::query_file_scalar!("queries/paused_queues.sql")
        .fetch_all(pool)
        .await?;
    let mut by_queue: std::collections::BTreeMap<String, QueueStats> = Default::default();
    for row in counts {
        by_queue
            .entry(row.queue.clone())
            .or_insert_with(|| QueueStats {
                queue: row.queue,
                ..QueueStats::default()
            })
            .states
            .insert(row.state, row.jobs);
    }
    for queue in paused {
        by_queue
            .entry(queue.clone())
            .or_insert_with(|| QueueStats {
                queue,
                ..QueueStats::default()
            })
            .paused = true;
    }
    Ok(by_queue.into_values().collect())
}

/// Jobs finished in one minute of one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throughput {
    pub queue: String,
    pub minute: chrono::DateTime<chrono::Utc>,
    pub succeeded: i64,
    /// Failed for good or cancelled.
    pub failed: i64,
}

/// Jobs finished per queue and minute since `since`, oldest first.
pub async fn throughput(
    pool: &Db,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Throughput>, QueueError> {
    Ok(
        sqlx::query_file_as!(Throughput, "queries/throughput.sql", since)
            .fetch_all(pool)
            .await?,
    )
}

/// How many worker processes heartbeated within `within`.
pub async fn live_workers(pool: &Db, within: std::time::Duration) -> Result<i64, QueueError> {
    Ok(
        sqlx::query_file_scalar!("queries/live_workers.sql", within.as_secs_f64())
            .fetch_one(pool)
            .await?,
    )
}

/// Drops jobs_done's day partitions past their retention (and creates the
/// coming days'), then deletes, batch by batch, what is past retention
/// outside them (the default partitions). Returns how many jobs went.
pub async fn prune(pool: &Db, retention: Retention) -> Result<u64, QueueError> {
    let (succeeded, failed) = (
        retention.succeeded.as_secs_f64(),
        retention.failed.as_secs_f64(),
    );
    let dropped = match sqlx::query_file_scalar!("queries/maintain_history.sql", succeeded, failed)
        .fetch_one(pool)
        .await
    {
        Ok(n) => u64::try_from(n).unwrap_or(0),
        // Another statement held a lock on jobs_done longer than the
        // maintenance waits (lock_timeout): next time.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
            tracing::info!("jobs_done partitions busy; their maintenance waits for the next prune");
            0
        }
        Err(e) => return Err(e.into()),
    };
    let mut total = dropped;
    loop {
        let n = sqlx::query_file!("queries/prune.sql", succeeded, failed, retention.batch)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < u64::try_from(retention.batch).unwrap_or(0) || n == 0 {
            return Ok(total);
        }
    }
}
