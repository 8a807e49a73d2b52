//! Which claims this process really holds, so that every job the database
//! says a live worker holds is one that worker is running.
//!
//! Claims and completions are bookkeeping written with
//! `synchronous_commit = off`: a Postgres crash can undo the last few
//! hundred milliseconds of them. A lost claim makes the database think the
//! job is free while we run it (the claim's lease token, `started_at`,
//! fences our writes: progress and completions of a lost claim change
//! nothing, and a handler's own commit refuses to go through). A lost
//! completion makes the database think we still run a job we finished:
//! rescue never looks at it, because we are alive and heartbeating.
//!
//! The ledger closes that gap. It knows every claim this process holds
//! (from the moment the claim statement returns until its outcome is
//! written) and every outcome written recently. With each heartbeat the
//! worker reads the claims the database says it holds and reconciles:
//! a claim with a recent outcome gets the outcome written again; a claim the
//! process knows nothing of is released (rescued, counted, audited).
//! Outcomes are forgotten only once a later reconciliation has seen the
//! database agree for longer than the WAL writer's flush delay, so a crash
//! at any moment finds them still here.

use dashtam_db::Db;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use tokio::sync::RwLock;
use tracing::{info, warn};
use uuid::Uuid;

use crate::worker::{Completion, Outcome, write_outcomes};
use crate::{AbandonHook, QueueError};

/// Asynchronous commits are flushed within three `wal_writer_delay`s
/// (200 ms by default); an outcome older than this was durable.
const DURABLE_AFTER: Duration = Duration::from_secs(3);

/// A claim: the job and its lease token.
pub(crate) type Claim = (Uuid, DateTime<Utc>);

#[derive(Default)]
struct Books {
    /// Claimed, outcome not written yet.
    held: HashMap<Uuid, DateTime<Utc>>,
    /// Outcomes written, with when.
    written: HashMap<Uuid, (DateTime<Utc>, Outcome, Instant)>,
}

/// Shared by the fetchers, the completer and the heartbeat.
#[derive(Clone, Default)]
pub(crate) struct Ledger {
    books: Arc<Mutex<Books>>,
    /// Claims hold it shared from the claim statement until they are
    /// booked; reconciliation holds it exclusively while it compares, so it
    /// never sees a claim the database has and the books do not yet.
    gate: Arc<RwLock<()>>,
}

impl Ledger {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn claiming(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.gate.clone().read_owned().await
    }

    pub(crate) fn claimed(&self, claims: impl IntoIterator<Item = Claim>) {
        let mut b = self.books();
        b.held.extend(claims);
    }

    /// Outcomes now written: no longer held, remembered for a while.
    pub(crate) fn written(&self, done: impl IntoIterator<Item = Completion>) {
        let now = Instant::now();
        let mut b = self.books();
        for c in done {
            if b.held.get(&c.id) == Some(&c.started_at) {
                b.held.remove(&c.id);
            }
            b.written.insert(c.id, (c.started_at, c.outcome, now));
        }
    }

    /// Claims handed back (shutdown): no longer held.
    pub(crate) fn released(&self, ids: &[Uuid]) {
        let mut b = self.books();
        for id in ids {
            b.held.remove(id);
        }
    }

    /// One reconciliation round (see the module docs). Returns how many
    /// outcomes were written again and how many claims were released.
    pub(crate) async fn reconcile(
        &self,
        pool: &Db,
        worker: Uuid,
        hook: Option<&Arc<dyn AbandonHook>>,
    ) -> Result<(usize, usize), QueueError> {
        let round = Instant::now();
        let (again, strays) = {
            let _gate = self.gate.write().await;
            let in_db = sqlx::query_file!("queries/held.sql", worker)
                .fetch_all(pool)
                .await?;
            let b = self.books();
            let mut again = Vec::new();
            let mut strays = Vec::new();
            for row in in_db {
                let (id, started_at) = (row.id, row.started_at);
                if b.held.get(&id) == Some(&started_at) {
                    continue;
                }
                match b.written.get(&id) {
                    Some((s, outcome, _)) if *s == started_at => again.push(Completion {
                        id,
                        started_at,
                        outcome: outcome.clone(),
                    }),
                    _ => strays.push((id, started_at)),
                }
            }
            (again, strays)
        };
        if !again.is_empty() {
            info!(
                count = again.len(),
                "job outcomes lost by the database written again"
            );
            write_outcomes(pool, worker, &again).await?;
        }
        let released = if strays.is_empty() {
            0
        } else {
            release_strays(pool, worker, &strays, hook).await?
        };
        // Everything written before this round's start less the flush
        // delay is durable: forget it.
        if let Some(cutoff) = round.checked_sub(DURABLE_AFTER) {
            self.books().written.retain(|_, (_, _, at)| *at >= cutoff);
        }
        Ok((again.len(), released))
    }
}

async fn release_strays(
    pool: &Db,
    worker: Uuid,
    strays: &[Claim],
    hook: Option<&Arc<dyn AbandonHook>>,
) -> Result<usize, QueueError> {
    let (ids, starts): (Vec<Uuid>, Vec<DateTime<Utc>>) = strays.iter().copied().unzip();
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_file!("queries/release_strays.sql", worker, &ids, &starts)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.id, r.queue, r.kind, r.attempt))
        .collect();
    let released = crate::worker::given_back(
        &mut tx,
        rows,
        "the worker lost its claim on this job in a database crash",
        "released",
        hook,
    )
    .await?;
    tx.commit().await?;
    if released > 0 {
        warn!(
            count = released,
            "released jobs this worker held in the database but was not running"
        );
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_outcome_is_no_longer_held() {
        let ledger = Ledger::default();
        let id = Uuid::now_v7();
        let at = Utc::now();
        ledger.claimed([(id, at)]);
        ledger.written([Completion {
            id,
            started_at: at,
            outcome: Outcome::Succeeded,
        }]);
        let b = ledger.books();
        assert!(b.held.is_empty());
        assert!(b.written.contains_key(&id));
    }

    #[test]
    fn an_outcome_of_an_older_claim_leaves_the_newer_claim_held() {
        let ledger = Ledger::default();
        let id = Uuid::now_v7();
        let old = Utc::now() - chrono::Duration::seconds(5);
        let new = Utc::now();
        ledger.claimed([(id, new)]);
        ledger.written([Completion {
            id,
            started_at: old,
            outcome: Outcome::Succeeded,
        }]);
        assert_eq!(ledger.books().held.get(&id), Some(&new));
    }
}
