//! Leadership of the scheduler: a leader lease and a row per processed
//! tick (tables `scheduler_leases`, `scheduler_ticks`).
//!
//! Leadership is a lease row renewed by its holder; a holder that stops
//! renewing (killed, partitioned) loses it once it expires and another
//! daemon takes it with a new term. Leadership only decides who does the
//! work; exactly-once comes from [`claim_tick`]: the tick's row is inserted
//! in the transaction that does the tick's work, and its primary key refuses
//! a second one.

use chrono::{DateTime, Utc};
use dashtam_db::Db;
use sqlx::PgExecutor;

use crate::QueueError;

/// The lease every scheduler process competes for.
pub const LEASE: &str = "scheduler";

/// Takes or keeps lease `name` for `holder` for `ttl`; the term if we now
/// lead.
pub async fn lead(
    pool: &Db,
    name: &str,
    holder: &str,
    ttl: std::time::Duration,
) -> Result<Option<i64>, QueueError> {
    Ok(sqlx::query_file_scalar!(
        "queries/leadership/lead.sql",
        name,
        holder,
        ttl.as_secs_f64()
    )
    .fetch_optional(pool)
    .await?)
}

/// Gives the lease up (at shutdown), if we hold it.
pub async fn resign(pool: &Db, name: &str, holder: &str) -> Result<bool, QueueError> {
    Ok(
        sqlx::query_file!("queries/leadership/resign.sql", name, holder)
            .execute(pool)
            .await?
            .rows_affected()
            == 1,
    )
}

/// Who holds lease `name`, if anyone ever did.
#[derive(Clone, Debug)]
pub struct Lease {
    pub holder: String,
    pub term: i64,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Not expired yet.
    pub live: bool,
}

pub async fn lease(pool: &Db, name: &str) -> Result<Option<Lease>, QueueError> {
    Ok(
        sqlx::query_file_as!(Lease, "queries/leadership/lease.sql", name)
            .fetch_optional(pool)
            .await?,
    )
}

/// The latest processed tick of `cycle`.
pub async fn last_tick(pool: &Db, cycle: &str) -> Result<Option<DateTime<Utc>>, QueueError> {
    Ok(
        sqlx::query_file_scalar!("queries/leadership/last_tick.sql", cycle)
            .fetch_one(pool)
            .await?,
    )
}

/// Records that `leader` processes this tick; `false` if it already was
/// (by anyone). Call inside the transaction that does the tick's work.
pub async fn claim_tick<'e>(
    executor: impl PgExecutor<'e>,
    cycle: &str,
    tick: DateTime<Utc>,
    leader: &str,
    term: i64,
) -> Result<bool, QueueError> {
    let claimed = sqlx::query_file_scalar!(
        "queries/leadership/claim_tick.sql",
        cycle,
        tick,
        leader,
        term
    )
    .fetch_optional(executor)
    .await?;
    Ok(claimed.is_some())
}

/// Records what the tick did.
pub async fn finish_tick<'e>(
    executor: impl PgExecutor<'e>,
    cycle: &str,
    tick: DateTime<Utc>,
    enqueued: u64,
    flagged: u64,
) -> Result<(), QueueError> {
    sqlx::query_file!(
        "queries/leadership/finish_tick.sql",
        cycle,
        tick,
        i64::try_from(enqueued).unwrap_or(i64::MAX),
        i64::try_from(flagged).unwrap_or(i64::MAX),
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// One processed tick.
#[derive(Clone, Debug)]
pub struct TickRecord {
    pub cycle: String,
    pub tick: DateTime<Utc>,
    pub leader: String,
    pub term: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub enqueued: i64,
    pub flagged: i64,
}

/// Newest first; `after` is the last `(tick, cycle)` of the previous page.
pub async fn ticks(
    pool: &Db,
    cycle: Option<&str>,
    after: Option<(DateTime<Utc>, &str)>,
    limit: i64,
) -> Result<Vec<TickRecord>, QueueError> {
    Ok(sqlx::query_file_as!(
        TickRecord,
        "queries/leadership/list_ticks.sql",
        cycle,
        after.map(|a| a.0),
        after.map(|a| a.1),
        limit
    )
    .fetch_all(pool)
    .await?)
}
