//! Fair claims: one owner's backlog must not starve the others.
//!
//! Each worker keeps a ring of the owners that have due jobs at the queue's
//! best priority, read at most every [`FRESH_FOR`] a page at a time
//! (`owners_due.sql`, a skip scan: one index probe per owner however many
//! jobs it has), pages taken in turn so every owner comes round however
//! many there are. While two or more owners have due jobs (or a per-owner
//! cap is set), a claim serves the next owners of the ring, an equal share
//! each, and fills what they leave in priority, run_at order
//! (`fetch_fair.sql`). Otherwise there is no one to be fair between and the
//! claim is the plain one (`fetch.sql`), at the same cost as before.

use dashtam_db::Db;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How long a read of the owners with due jobs is used before it is read
/// again: a new owner's first job waits at most about this long for its
/// share.
pub(crate) const FRESH_FOR: Duration = Duration::from_millis(500);
/// Owners read at once.
const PAGE: i64 = 512;
/// How often each fetcher reads its queue's claim floor (`claim_floor.sql`)
/// again, in a task of its own (the read walks the old end of the index,
/// and claims should not wait for it): a job that became pending below the
/// floor (its enqueue's transaction committed more than
/// [`FLOOR_SLACK_SECS`] after it began) waits at most about this long.
const FLOOR_EVERY: Duration = Duration::from_secs(2);
/// How far below the oldest pending job (or now) the floor lies: what an
/// enqueueing transaction usually takes to commit. Claims step over the
/// index entries of the jobs claimed within this (plus [`FLOOR_EVERY`]):
/// 30 s of them made a claim walk ~10,000 entries at 300 jobs/s while a
/// transaction held vacuum back.
const FLOOR_SLACK_SECS: f64 = 2.0;

/// Owners served by one claim, each an equal share of it: each served
/// owner costs the claim an index probe and a lock (~50 µs), so a claim of
/// 100 jobs for 100 owners cost ~6 ms against ~2 ms for 10 owners; the
/// ring brings the others round in the next claims.
const OWNERS_PER_CLAIM: usize = 10;

/// A queue's claim floor as last read: no pending job of the queue has an
/// older run_at; and the priorities it had pending jobs at.
#[derive(Clone, Debug)]
pub(crate) struct FloorRead {
    pub(crate) floor: chrono::DateTime<chrono::Utc>,
    pub(crate) priorities: Vec<i16>,
}

impl FloorRead {
    /// The worst priority claims probe for besides `priorities`: just
    /// better than the best of them (any priority when there are none).
    fn probe_up_to(&self) -> i16 {
        self.priorities
            .first()
            .map_or(i16::MAX, |best| best.saturating_sub(1))
    }
}

/// The last [`FloorRead`] of a fetcher's queue, shared with the task that
/// keeps it fresh.
#[derive(Clone, Default)]
pub(crate) struct Floor(std::sync::Arc<std::sync::Mutex<Option<FloorRead>>>);

impl Floor {
    async fn read(&self, pool: &Db, queue: &str) -> Result<FloorRead, sqlx::Error> {
        let row = sqlx::query_file!("queries/claim_floor.sql", queue, FLOOR_SLACK_SECS)
            .fetch_one(pool)
            .await?;
        let read = FloorRead {
            floor: row.floor,
            priorities: row.priorities,
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(read.clone());
        Ok(read)
    }

    /// The floor as last read, reading it first if it never was.
    async fn get(&self, pool: &Db, queue: &str) -> Result<FloorRead, sqlx::Error> {
        let last = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match last {
            Some(read) => Ok(read),
            None => self.read(pool, queue).await,
        }
    }

    /// Reads the floor again every [`FLOOR_EVERY`] until `stop`.
    pub(crate) async fn keep_fresh(
        self,
        pool: Db,
        queue: String,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLOOR_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = self.read(&pool, &queue).await {
                tracing::warn!(queue, error = %e, "reading the claim floor failed; keeping the last one");
            }
        }
    }
}

/// The owners with due jobs, as last read, served in turn.
#[derive(Default)]
pub(crate) struct OwnerRing {
    priority: i16,
    owners: Vec<String>,
    /// The next owner to serve.
    next: usize,
    read_at: Option<Instant>,
    /// The next page starts after this owner ("": from the first).
    cursor: String,
    /// The queue's claim floor (kept fresh by [`Floor::keep_fresh`]).
    pub(crate) floor: Floor,
}

impl OwnerRing {
    /// Reads again at the next claim (a claim came back short: the owners
    /// may have changed).
    pub(crate) fn stale(&mut self) {
        self.read_at = None;
    }

    async fn refresh(
        &mut self,
        pool: &Db,
        queue: &str,
        floor: &FloorRead,
    ) -> Result<(), sqlx::Error> {
        let rows = sqlx::query_file!(
            "queries/owners_due.sql",
            queue,
            self.cursor,
            PAGE,
            floor.floor,
            &floor.priorities,
            floor.probe_up_to()
        )
        .fetch_all(pool)
        .await?;
        // A short page reached the last owner: the next starts over.
        self.cursor = if rows.len() < PAGE as usize {
            String::new()
        } else {
            rows.last().map(|r| r.owner.clone()).unwrap_or_default()
        };
        self.priority = rows.first().map_or(0, |r| r.priority);
        self.owners = rows
            .into_iter()
            .filter(|r| r.due)
            .map(|r| r.owner)
            .collect();
        self.next = 0;
        self.read_at = Some(Instant::now());
        Ok(())
    }

    /// The next `n` owners to serve (each at most once).
    fn take(&mut self, n: usize) -> Vec<String> {
        let len = self.owners.len();
        let k = n.min(len);
        let out = (0..k)
            .map(|i| self.owners[(self.next + i) % len].clone())
            .collect();
        if len > 0 {
            self.next = (self.next + k) % len;
        }
        out
    }
}

/// A claimed job, as the claim statements return it.
pub(crate) struct Claimed {
    pub(crate) id: Uuid,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) payload: serde_json::Value,
    pub(crate) attempt: i32,
    pub(crate) max_attempts: i32,
    pub(crate) owner: Option<String>,
    pub(crate) throttle_key: Option<String>,
    pub(crate) run_at: chrono::DateTime<chrono::Utc>,
    pub(crate) started_at: chrono::DateTime<chrono::Utc>,
    /// The W3C `traceparent` of the span that enqueued it.
    pub(crate) trace_parent: Option<String>,
}

/// One claim: up to `n` due jobs of `queue` for `worker`.
pub(crate) struct ClaimRequest {
    pub queue: String,
    pub n: usize,
    pub worker: Uuid,
    /// Most of one owner's jobs running at once in the queue (0: no cap).
    pub max_running_per_owner: usize,
}

/// Claims what `req` asks for (see the module's documentation), reading the
/// owners again first if the last read is older than [`FRESH_FOR`].
pub(crate) async fn claim(
    pool: &Db,
    ring: &mut OwnerRing,
    req: &ClaimRequest,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let floor = ring.floor.get(pool, &req.queue).await?;
    if ring.read_at.is_none_or(|at| at.elapsed() >= FRESH_FOR) {
        ring.refresh(pool, &req.queue, &floor).await?;
    }
    let cap = req.max_running_per_owner;
    let owners = if ring.owners.len() >= 2 || (cap > 0 && !ring.owners.is_empty()) {
        ring.take(req.n.min(OWNERS_PER_CLAIM))
    } else {
        Vec::new()
    };
    let priority = ring.priority;
    if cap == 0 && !pool.is_pooled() {
        let mut conn = pool.acquire().await?;
        return run(&mut conn, req, &owners, priority, &floor).await;
    }
    // Through a transaction pooler every statement runs in a transaction
    // anyway. With a cap, it counts running jobs in the claim's snapshot:
    // claims of the queue take turns (a lock held to commit), so each
    // one's snapshot includes every earlier claim and two at once cannot
    // both fill the last slot of an owner.
    let mut tx = pool.begin().await?;
    if cap > 0 {
        sqlx::query_file!("queries/claim_turn.sql", req.queue)
            .fetch_one(&mut *tx)
            .await?;
    }
    let jobs = run(&mut tx, req, &owners, priority, &floor).await?;
    tx.commit().await?;
    Ok(jobs)
}

/// The claim statement: the plain one without `owners`, else the fair one.
async fn run(
    conn: &mut sqlx::PgConnection,
    req: &ClaimRequest,
    owners: &[String],
    priority: i16,
    floor: &FloorRead,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let n = i64::try_from(req.n).unwrap_or(i64::MAX);
    let cap = i64::try_from(req.max_running_per_owner).unwrap_or(i64::MAX);
    if owners.is_empty() {
        sqlx::query_file_as!(
            Claimed,
            "queries/fetch.sql",
            req.queue,
            n,
            req.worker,
            cap,
            floor.floor,
            &floor.priorities,
            floor.probe_up_to()
        )
        .fetch_all(conn)
        .await
    } else {
        sqlx::query_file_as!(
            Claimed,
            "queries/fetch_fair.sql",
            req.queue,
            n,
            req.worker,
            owners,
            cap,
            priority,
            floor.floor,
            &floor.priorities,
            floor.probe_up_to()
        )
        .fetch_all(conn)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_served_in_turn_and_wrap() {
        let mut ring = OwnerRing {
            owners: ["a", "b", "c"].map(String::from).to_vec(),
            ..OwnerRing::default()
        };
        assert_eq!(ring.take(2), ["a", "b"]);
        assert_eq!(ring.take(2), ["c", "a"]);
        // Never the same owner twice in one claim.
        assert_eq!(ring.take(5), ["b", "c", "a"]);
        assert!(OwnerRing::default().take(3).is_empty());
    }
}
