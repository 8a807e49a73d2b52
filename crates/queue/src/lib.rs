//! Dashtam's Postgres-backed job queue.
//!
//! * [`Queue`] is the client side: enqueue (single with unique keys, or in
//!   bulk), read a job, report progress.
//! * [`WorkerPool`] runs handlers: batched claims with `FOR UPDATE SKIP
//!   LOCKED`, wake-ups by `LISTEN/NOTIFY` with a polling fallback, batched
//!   completion, retries scheduled in the database with exponential backoff
//!   and jitter, heartbeats and orphan rescue, graceful shutdown.
//!
//! Architecture invariant: this crate owns the `jobs` and `queue_workers`
//! tables; nothing else writes them.

mod backoff;
mod coalesce;
pub mod events;
mod fair;
pub mod leadership;
mod ledger;
pub mod ops;
mod state;
mod worker;

use chrono::{DateTime, Utc};
use dashtam_db::Db;
use dashtam_domain::jobs::JobArgs;
use dashtam_telemetry::metrics::METRICS;
use serde::Serialize;

use uuid::Uuid;

pub use backoff::Backoff;
pub use state::JobState;
pub use worker::{
    ArgsHandler, Handler, JobContext, JobError, QueueConfig, Retention, WorkerConfig, WorkerPool,
    maintain, rescue_once,
};

/// An attempt taken from its worker without an outcome: rescued from a dead
/// worker, handed back at shutdown, or released after a crash lost its
/// claim or completion.
#[derive(Clone, Debug)]
pub struct AbandonedJob {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    /// The attempt that was abandoned (1 for the first run).
    pub attempt: i32,
    pub reason: String,
}

/// Told about abandoned attempts inside the transaction that changes their
/// jobs, so whatever it writes (the audit trail's OUTCOME for the attempt)
/// commits exactly when the job changes hands.
#[async_trait::async_trait]
pub trait AbandonHook: Send + Sync + 'static {
    async fn abandoned(
        &self,
        conn: &mut sqlx::PgConnection,
        jobs: &[AbandonedJob],
    ) -> Result<(), sqlx::Error>;
}

/// Postgres `NOTIFY` channel that wakes idle workers.
pub const NOTIFY_CHANNEL: &str = "dashtam_jobs";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The error of a batched query, shared by every request in the batch.
    #[error("queue database error: {0}")]
    Shared(std::sync::Arc<sqlx::Error>),
    #[error("the queue's batching task stopped")]
    Stopped,
}

/// A job to enqueue.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// Lower runs first; 0 is the default.
    pub priority: i16,
    pub max_attempts: i32,
    /// Not before this time (`None`: now).
    pub run_at: Option<DateTime<Utc>>,
    /// At most one pending or running job per key.
    pub unique_key: Option<String>,
    /// The tenant the job belongs to, for access checks.
    pub owner: Option<String>,
    /// The key whose breaker and pauses apply to the job (its provider),
    /// so its pending jobs can be snoozed and woken together.
    pub throttle_key: Option<String>,
    /// What the job is about (e.g. a connection id), for listing.
    pub subject: Option<String>,
    /// The enqueuing span's W3C `traceparent` (taken when the job is made,
    /// if a trace is being recorded): the job's run continues that trace.
    pub trace_parent: Option<String>,
}

impl NewJob {
    /// The job `args` describe: its kind, queue, unique key, priority and
    /// subject as its type declares them. Attempts, owner, throttle key and
    /// run time are the caller's.
    pub fn from_args<A: JobArgs>(args: &A) -> Result<Self, serde_json::Error> {
        let mut job = Self::new(
            A::KIND.queue(),
            A::KIND.as_str(),
            serde_json::to_value(args)?,
        );
        job.priority = A::PRIORITY;
        job.unique_key = args.unique_key();
        job.subject = args.subject();
        Ok(job)
    }

    pub fn new(queue: &str, kind: &str, payload: serde_json::Value) -> Self {
        Self {
            queue: queue.to_owned(),
            kind: kind.to_owned(),
            payload,
            priority: 0,
            max_attempts: 5,
            run_at: None,
            unique_key: None,
            owner: None,
            throttle_key: None,
            subject: None,
            trace_parent: dashtam_telemetry::traces::current_traceparent(),
        }
    }
}

/// A job row as clients see it.
#[derive(Clone, Debug, Serialize)]
pub struct JobRecord {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub state: JobState,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<String>,
    pub owner: Option<String>,
    pub throttle_key: Option<String>,
    /// What the job is about (a connection id).
    pub subject: Option<String>,
    /// Why a snoozed job waits: `{"reason": …, "until": …}`.
    pub waiting: Option<serde_json::Value>,
    pub locked_by: Option<Uuid>,
    pub cancel_requested: bool,
    pub progress: Option<serde_json::Value>,
    pub errors: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    /// Whether the job will not run again by itself.
    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }
}

/// A row of `enqueue_batch.sql`.
#[derive(Clone)]
pub(crate) struct EnqueuedRow {
    job: JobRecord,
    created: bool,
}

impl From<EnqueuedRow> for Enqueued {
    fn from(row: EnqueuedRow) -> Self {
        if row.created {
            Self::Created(row.job)
        } else {
            Self::Existing(row.job)
        }
    }
}

/// Whether [`Queue::enqueue`] made a new job or found a pending one with the
/// same unique key.
#[derive(Debug)]
pub enum Enqueued {
    Created(JobRecord),
    Existing(JobRecord),
}

impl Enqueued {
    pub fn job(&self) -> &JobRecord {
        match self {
            Self::Created(j) | Self::Existing(j) => j,
        }
    }
}

/// The client side of the queue.
/// What [`Queue::list`] keeps; `None` means any.
#[derive(Clone, Copy, Debug, Default)]
pub struct JobFilter<'a> {
    pub owner: Option<&'a str>,
    pub state: Option<JobState>,
    pub kind: Option<&'a str>,
    /// Jobs about this subject only.
    pub subject: Option<&'a str>,
    pub queue: Option<&'a str>,
    pub after: Option<Uuid>,
}

#[derive(Clone, Debug)]
pub struct Queue {
    pool: Db,
    wakeups: std::sync::Arc<coalesce::Wakeups>,
    lookups: std::sync::Arc<coalesce::Lookups>,
    batches: std::sync::Arc<coalesce::Enqueues>,
}

impl Queue {
    pub fn new(pool: impl Into<Db>) -> Self {
        Self {
            pool: pool.into(),
            wakeups: Default::default(),
            lookups: Default::default(),
            batches: Default::default(),
        }
    }

    pub fn pool(&self) -> &Db {
        &self.pool
    }

    /// Enqueues one job; with a unique key, returns the pending job holding
    /// that key instead of creating a second one. Enqueues that arrive
    /// together share one statement and one commit.
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError> {
        let enqueued = match self
            .batches
            .call(&self.pool, job, coalesce::enqueue)
            .await??
        {
            Ok(done) => done,
            Err(job) => self.enqueue_one(&job).await?,
        };
        if let Enqueued::Created(job) = &enqueued {
            if job.state == JobState::Available {
                self.wakeups.wake(&self.pool, &job.queue);
            }
            METRICS
                .jobs
                .with_label_values(&[&job.queue, &job.kind, "enqueued"])
                .inc();
        }
        Ok(enqueued)
    }

    async fn enqueue_one(&self, job: &NewJob) -> Result<Enqueued, QueueError> {
        // The unique-key conflict and the lookup of the winner are one
        // statement, but a winner that finishes in between makes it come back
        // empty: then the insert is simply tried again.
        loop {
            let row = coalesce::insert(&self.pool, &[Uuid::now_v7()], &[job])
                .await?
                .pop();
            if let Some(row) = row {
                return Ok(row.into());
            }
        }
    }

    /// Enqueues many jobs in one statement; returns how many were
    /// inserted (a job whose unique key a pending job holds is skipped).
    pub async fn enqueue_many(&self, jobs: &[NewJob]) -> Result<u64, QueueError> {
        enqueue_many_in(&self.pool, jobs).await
    }

    /// The pending or running job holding `unique_key`, if any.
    pub async fn holder_of(&self, unique_key: &str) -> Result<Option<JobRecord>, QueueError> {
        Ok(
            sqlx::query_file_as!(JobRecord, "queries/pending_by_key.sql", unique_key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// How many jobs are in each state (for one kind, or all).
    pub async fn state_counts(
        &self,
        kind: Option<&str>,
    ) -> Result<Vec<(JobState, i64)>, QueueError> {
        Ok(sqlx::query_file!("queries/state_counts.sql", kind)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| (r.state, r.jobs))
            .collect())
    }

    /// Jobs newest first, filtered; `after` is the previous page's last id.
    pub async fn list(
        &self,
        filter: &JobFilter<'_>,
        limit: i64,
    ) -> Result<Vec<JobRecord>, QueueError> {
        Ok(sqlx::query_file_as!(
            JobRecord,
            "queries/list_jobs.sql",
            filter.owner,
            filter.state.map(JobState::as_str),
            filter.kind,
            filter.subject,
            filter.after,
            filter.queue,
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// One job; lookups that arrive together share one query.
    pub async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, QueueError> {
        self.lookups.call(&self.pool, id, coalesce::lookup).await?
    }
}

/// New jobs as the columns both enqueue statements unnest, one named field
/// per column (see [`insert_jobs!`]).
pub(crate) struct JobColumns<'a> {
    pub ids: &'a [Uuid],
    pub queue: Vec<&'a str>,
    pub kind: Vec<&'a str>,
    pub payload: Vec<&'a serde_json::Value>,
    pub priority: Vec<i16>,
    pub max_attempts: Vec<i32>,
    pub run_at: Vec<DateTime<Utc>>,
    pub owner: Vec<Option<&'a str>>,
    pub unique_key: Vec<Option<&'a str>>,
    pub throttle_key: Vec<Option<&'a str>>,
    pub subject: Vec<Option<&'a str>>,
    pub trace_parent: Vec<Option<&'a str>>,
}

impl<'a> JobColumns<'a> {
    pub(crate) fn of(ids: &'a [Uuid], jobs: &[&'a NewJob]) -> Self {
        let now = Utc::now();
        let opt = |f: fn(&'a NewJob) -> Option<&'a str>| jobs.iter().map(|j| f(j)).collect();
        Self {
            ids,
            queue: jobs.iter().map(|j| j.queue.as_str()).collect(),
            kind: jobs.iter().map(|j| j.kind.as_str()).collect(),
            payload: jobs.iter().map(|j| &j.payload).collect(),
            priority: jobs.iter().map(|j| j.priority).collect(),
            max_attempts: jobs.iter().map(|j| j.max_attempts).collect(),
            run_at: jobs.iter().map(|j| j.run_at.unwrap_or(now)).collect(),
            owner: opt(|j| j.owner.as_deref()),
            unique_key: opt(|j| j.unique_key.as_deref()),
            throttle_key: opt(|j| j.throttle_key.as_deref()),
            subject: opt(|j| j.subject.as_deref()),
            trace_parent: opt(|j| j.trace_parent.as_deref()),
        }
    }
}

/// One of the enqueue statements (`$file`) with [`JobColumns`] `$c` bound
/// as `$1`–`$12`. (Arrays of borrowed text and JSON are bound `as _`: the
/// macros check them against arrays of owned values only; the statements'
/// casts fix their types.)
macro_rules! insert_jobs {
    ($file:literal, $c:expr) => {
        sqlx::query_file!(
            $file,
            $c.ids,
            &$c.queue as _,
            &$c.kind as _,
            &$c.payload as _,
            &$c.priority,
            &$c.max_attempts,
            &$c.run_at,
            &$c.owner as _,
            &$c.unique_key as _,
            &$c.throttle_key as _,
            &$c.subject as _,
            &$c.trace_parent as _,
        )
    };
}
pub(crate) use insert_jobs;

/// [`Queue::enqueue_many`] on any executor: inside a caller's transaction,
/// the jobs exist exactly when the caller's other writes do.
pub async fn enqueue_many_in<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    jobs: &[NewJob],
) -> Result<u64, QueueError> {
    let ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::now_v7()).collect();
    let jobs: Vec<&NewJob> = jobs.iter().collect();
    let columns = JobColumns::of(&ids, &jobs);
    let inserted = insert_jobs!("queries/enqueue_many.sql", columns)
        .fetch_all(executor)
        .await?;
    let mut total = 0;
    for row in &inserted {
        let n = u64::try_from(row.jobs).unwrap_or(0);
        METRICS
            .jobs
            .with_label_values(&[&row.queue, &row.kind, "enqueued"])
            .inc_by(n);
        total += n;
    }
    Ok(total)
}

/// How often listeners with no connection to LISTEN on look for changes.
const POLL_WITHOUT_LISTEN: std::time::Duration = std::time::Duration::from_millis(500);

/// LISTENs on `channel` until `stop`, reconnecting by itself. `on` gets each
/// notification's payload, and `None` whenever notifications may have been
/// missed (on connecting and after the connection broke): then callers
/// should look for themselves.
pub(crate) async fn listen_channel(
    pool: Db,
    channel: &str,
    on: impl Fn(Option<&str>),
    stop: tokio_util::sync::CancellationToken,
) {
    use sqlx::postgres::PgListener;
    // Through a transaction pooler with no direct connection to LISTEN on:
    // callers look for themselves, every POLL_WITHOUT_LISTEN.
    let Some(pool) = pool.session().cloned() else {
        loop {
            on(None);
            tokio::select! {
                _ = tokio::time::sleep(POLL_WITHOUT_LISTEN) => {}
                _ = stop.cancelled() => return,
            }
        }
    };
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, channel, "LISTEN connection failed; polling meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        if let Err(e) = listener.listen(channel).await {
            tracing::warn!(error = %e, channel, "LISTEN failed; polling meanwhile");
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                _ = stop.cancelled() => return,
            }
        }
        // Anything that happened while we were not listening.
        on(None);
        loop {
            tokio::select! {
                msg = listener.try_recv() => match msg {
                    Ok(Some(n)) => on(Some(n.payload())),
                    // Connection lost: sqlx reconnects on the next call.
                    Ok(None) => on(None),
                    Err(e) => {
                        tracing::warn!(error = %e, channel, "LISTEN connection broke; reconnecting");
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}
