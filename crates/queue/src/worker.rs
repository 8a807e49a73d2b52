//! The worker runtime: claims jobs, runs handlers, records outcomes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use dashtam_telemetry::metrics::METRICS;

use crate::fair::{self, ClaimRequest, OwnerRing};
use crate::ledger::Ledger;
use crate::{AbandonHook, AbandonedJob, Backoff, NOTIFY_CHANNEL, QueueError};

/// Per-queue settings.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    pub name: String,
    /// Jobs of this queue running at once in this process.
    pub concurrency: usize,
    /// Most jobs claimed in one round trip.
    pub fetch_batch: usize,
    /// Jobs claimed beyond the free slots, to start the moment a slot frees
    /// (for many short jobs). 0 for long jobs, so an idle peer process gets
    /// them instead.
    pub prefetch: usize,
    /// Most jobs of one owner running at once in this queue, across every
    /// process (0: no cap). With a cap, a claim takes an owner's jobs only
    /// through its fair share, never through the fill.
    pub max_running_per_owner: usize,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Shown in `queue_workers.name` (host and pid, say); the id is unique
    /// per process regardless.
    pub name: String,
    pub queues: Vec<QueueConfig>,
    /// Fallback poll when no notification arrives (also picks up retries
    /// and scheduled jobs falling due).
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is presumed dead and its jobs rescued.
    pub orphan_timeout: Duration,
    /// How often this process looks for orphans.
    pub rescue_interval: Duration,
    pub backoff: Backoff,
    /// Most outcomes written in one statement.
    pub completion_batch: usize,
    /// On shutdown, how long running jobs may take to finish before they are
    /// handed back.
    pub shutdown_timeout: Duration,
}

/// How long finished jobs are kept before the scheduler's prune cycle
/// deletes them ([`crate::ops::prune`]).
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub succeeded: Duration,
    /// Failed (dead) and cancelled jobs.
    pub failed: Duration,
    /// Rows deleted per statement.
    pub batch: i64,
}

/// What a handler reports when a job did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again later: after `after` if given (a provider's `Retry-After`),
    /// else after the configured backoff.
    #[error("{message}")]
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// Retrying cannot help: the job dies now.
    #[error("{message}")]
    Permanent { message: String },
    /// The job saw a cancellation request and stopped.
    #[error("cancelled")]
    Cancelled,
    /// Not now, and not the job's fault: something it depends on (a
    /// provider whose breaker is open, or that asked everyone to wait) is
    /// unavailable until `after` from now. The job waits that long without
    /// spending an attempt or recording an error; `reason` (a stable word,
    /// e.g. `provider_unavailable`) is shown with the time in its `waiting`.
    #[error("waiting: {reason}")]
    Snooze { after: Duration, reason: String },
}

impl JobError {
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry {
            message: message.into(),
            after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
        }
    }
}

/// What a handler is given: the claimed job and a way to report progress.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// 1 on the first run.
    pub attempt: i32,
    pub max_attempts: i32,
    pub owner: Option<String>,
    pub throttle_key: Option<String>,
    worker_id: Uuid,
    /// The claim's lease token: the job row's `started_at` as this claim
    /// set it. Every write about the job is fenced by it.
    started_at: chrono::DateTime<chrono::Utc>,
    pool: PgPool,
}

impl JobContext {
    /// Whether job `other` is running now (a job that must not overlap it
    /// waits).
    pub async fn is_running(&self, other: Uuid) -> Result<bool, QueueError> {
        Ok(
            sqlx::query_scalar(include_str!("../queries/job_running.sql"))
                .bind(other)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Records progress visible through the job's status. Returns whether
    /// cancellation was requested: the handler should then stop, discard
    /// what it has not committed and return [`JobError::Cancelled`].
    pub async fn set_progress(&self, progress: &serde_json::Value) -> Result<bool, QueueError> {
        let cancel: Option<bool> = sqlx::query_scalar(include_str!("../queries/set_progress.sql"))
            .bind(self.id)
            .bind(progress)
            .bind(self.worker_id)
            .bind(self.started_at)
            .fetch_optional(&self.pool)
            .await?;
        // No row: the job is no longer ours (rescued while we stalled, or
        // the claim was lost with a database crash); stop.
        Ok(cancel.unwrap_or(true))
    }

    /// Marks the job succeeded on `conn`, the handler's own transaction,
    /// so its work and its success commit (or roll back) together. `false`:
    /// this claim is no longer ours (rescued, or undone by a database
    /// crash); the caller must roll its work back, another run owns the
    /// job now.
    pub async fn complete_in(
        &self,
        conn: &mut sqlx::PgConnection,
        progress: Option<&serde_json::Value>,
    ) -> Result<bool, sqlx::Error> {
        let row: Option<Uuid> = sqlx::query_scalar(include_str!("../queries/complete_fenced.sql"))
            .bind(self.id)
            .bind(self.worker_id)
            .bind(self.started_at)
            .bind(progress)
            .fetch_optional(conn)
            .await?;
        Ok(row.is_some())
    }
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, job: &JobContext) -> Result<(), JobError>;
}

#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Succeeded,
    Failed {
        state: &'static str,
        delay: Duration,
        message: String,
    },
    Snoozed {
        delay: Duration,
        waiting: serde_json::Value,
    },
}

pub(crate) struct Completion {
    pub(crate) id: Uuid,
    pub(crate) started_at: chrono::DateTime<chrono::Utc>,
    pub(crate) outcome: Outcome,
}

/// A pool of workers over one or more queues, in one process.
pub struct WorkerPool {
    pool: PgPool,
    config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn Handler>>,
    abandon_hook: Option<Arc<dyn AbandonHook>>,
    id: Uuid,
}

impl WorkerPool {
    pub fn new(pool: PgPool, config: WorkerConfig) -> Self {
        Self {
            pool,
            config,
            handlers: HashMap::new(),
            abandon_hook: None,
            id: Uuid::now_v7(),
        }
    }

    /// Registers the handler for jobs of `kind`.
    pub fn handle(mut self, kind: &str, handler: Arc<dyn Handler>) -> Self {
        self.handlers.insert(kind.to_owned(), handler);
        self
    }

    /// Told, in the same transaction, about every attempt taken from a
    /// worker without an outcome (rescued, handed back, released).
    pub fn on_abandoned(mut self, hook: Arc<dyn AbandonHook>) -> Self {
        self.abandon_hook = Some(hook);
        self
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Runs until `shutdown` is cancelled, then stops claiming, lets running
    /// jobs finish (up to the timeout), hands the rest back and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), QueueError> {
        sqlx::query(include_str!("../queries/register_worker.sql"))
            .bind(self.id)
            .bind(&self.config.name)
            .execute(&self.pool)
            .await?;
        info!(worker_id = %self.id, queues = ?self.config.queues.iter().map(|q| &q.name).collect::<Vec<_>>(), "worker pool started");

        let wakers: Arc<HashMap<String, Arc<Notify>>> = Arc::new(
            self.config
                .queues
                .iter()
                .map(|q| (q.name.clone(), Arc::new(Notify::new())))
                .collect(),
        );
        let handlers = Arc::new(self.handlers);
        // Bounded: when outcomes are written slower than jobs finish, job
        // tasks wait here holding their slots, and claiming slows down.
        let (done_tx, done_rx) =
            mpsc::channel::<Completion>(self.config.completion_batch.max(1) * 4);
        let fetch_stop = shutdown.child_token();
        let background_stop = CancellationToken::new();
        let ledger = Ledger::default();

        let mut background = JoinSet::new();
        background.spawn(listen(
            self.pool.clone(),
            wakers.clone(),
            background_stop.clone(),
        ));
        background.spawn(heartbeat(
            Heartbeat {
                pool: self.pool.clone(),
                id: self.id,
                name: self.config.name.clone(),
                ledger: ledger.clone(),
                hook: self.abandon_hook.clone(),
            },
            self.config.heartbeat_interval,
            background_stop.clone(),
        ));
        background.spawn(maintain(
            self.pool.clone(),
            self.config.orphan_timeout,
            self.config.rescue_interval,
            self.abandon_hook.clone(),
            background_stop.clone(),
        ));
        let completer = tokio::spawn(complete(
            self.pool.clone(),
            self.id,
            self.config.completion_batch,
            ledger.clone(),
            done_rx,
        ));

        let mut fetchers = JoinSet::new();
        for q in &self.config.queues {
            let fetcher = Fetcher {
                pool: self.pool.clone(),
                worker_id: self.id,
                queue: q.clone(),
                handlers: handlers.clone(),
                waker: wakers[&q.name].clone(),
                poll_interval: self.config.poll_interval,
                backoff: self.config.backoff,
                done: done_tx.clone(),
                ledger: ledger.clone(),
            };
            fetchers.spawn(fetcher.run(fetch_stop.clone(), self.config.shutdown_timeout));
        }
        drop(done_tx);

        let mut handed_back = Vec::new();
        while let Some(res) = fetchers.join_next().await {
            match res {
                Ok(ids) => handed_back.extend(ids),
                Err(e) => error!(error = %e, "fetcher task panicked"),
            }
        }
        // All senders are gone once the fetchers (and their jobs) are done:
        // the completer drains what is left and exits.
        if let Err(e) = completer.await {
            error!(error = %e, "completer task panicked");
        }
        if !handed_back.is_empty() {
            warn!(
                count = handed_back.len(),
                "handing unfinished jobs back to the queue"
            );
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query_as(include_str!("../queries/hand_back.sql"))
                .bind(&handed_back)
                .bind(self.id)
                .fetch_all(&mut *tx)
                .await?;
            given_back(
                &mut tx,
                rows,
                "the worker shut down before the job finished; handed back uncharged",
                "handed_back",
                self.abandon_hook.as_ref(),
            )
            .await?;
            tx.commit().await?;
            ledger.released(&handed_back);
        }
        background_stop.cancel();
        while background.join_next().await.is_some() {}
        sqlx::query("DELETE FROM queue_workers WHERE id = $1")
            .bind(self.id)
            .execute(&self.pool)
            .await?;
        info!(worker_id = %self.id, "worker pool stopped");
        Ok(())
    }
}

type ClaimFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Vec<Claimed>, usize), sqlx::Error>> + Send>,
>;

/// Claims up to `n` due jobs of `queue` for `worker` (fairly between
/// owners, see `fair`) and books them in the ledger; returns them and `n`.
async fn claim_jobs(
    pool: PgPool,
    ring: Arc<tokio::sync::Mutex<OwnerRing>>,
    req: ClaimRequest,
    ledger: Ledger,
) -> Result<(Vec<Claimed>, usize), sqlx::Error> {
    let _booking = ledger.claiming().await;
    let mut ring = ring.lock().await;
    let jobs: Vec<Claimed> = fair::claim(&pool, &mut ring, &req).await?;
    if jobs.len() < req.n {
        ring.stale();
    }
    ledger.claimed(jobs.iter().map(|j| (j.id, j.started_at)));
    Ok((jobs, req.n))
}

struct Fetcher {
    pool: PgPool,
    worker_id: Uuid,
    queue: QueueConfig,
    handlers: Arc<HashMap<String, Arc<dyn Handler>>>,
    waker: Arc<Notify>,
    poll_interval: Duration,
    backoff: Backoff,
    done: mpsc::Sender<Completion>,
    ledger: Ledger,
}

#[derive(sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    queue: String,
    kind: String,
    payload: serde_json::Value,
    attempt: i32,
    max_attempts: i32,
    owner: Option<String>,
    throttle_key: Option<String>,
    run_at: chrono::DateTime<chrono::Utc>,
    started_at: chrono::DateTime<chrono::Utc>,
}

impl Fetcher {
    /// Claims and runs jobs until `stop`; then waits up to `grace` for
    /// running jobs and returns the ids of those it had to abandon.
    async fn run(self, stop: CancellationToken, grace: Duration) -> Vec<Uuid> {
        let slots = Arc::new(Semaphore::new(self.queue.concurrency));
        let mut running: JoinSet<()> = JoinSet::new();
        let mut running_ids: HashMap<tokio::task::Id, Uuid> = HashMap::new();
        // Claimed jobs waiting for a free slot (at most `prefetch` beyond
        // the free slots at claim time).
        let mut buffer: VecDeque<Claimed> = VecDeque::new();
        // The claim in flight, if any: it runs while finished jobs free
        // slots and buffered jobs start, so a round trip never stalls them.
        let mut claim: Option<ClaimFuture> = None;
        // The last claim came back short: wait for a wake-up before the next.
        let mut dry = false;
        // The owners with due jobs, served in turn.
        let ring = Arc::new(tokio::sync::Mutex::new(OwnerRing::default()));
        let mut db_failures = 0u32;
        let poll = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(poll);
        loop {
            // Reap finished tasks so the id map stays small.
            while let Some(res) = running.try_join_next_with_id() {
                let id = match res {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                running_ids.remove(&id);
            }
            // Start what the free slots allow.
            while !buffer.is_empty() {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let Some(job) = buffer.pop_front() else { break };
                let job_id = job.id;
                let handle = running.spawn(self.run_job(job, permit));
                running_ids.insert(handle.id(), job_id);
            }
            // Claim when the buffer is down to half the prefetch: claims stay
            // large (one round trip for many jobs) without hoarding.
            if claim.is_none() && !dry && buffer.len() <= self.queue.prefetch / 2 {
                let room = (slots.available_permits() + self.queue.prefetch)
                    .saturating_sub(buffer.len())
                    .min(self.queue.fetch_batch);
                if room > 0 {
                    let req = ClaimRequest {
                        queue: self.queue.name.clone(),
                        n: room,
                        worker: self.worker_id,
                        max_running_per_owner: self.queue.max_running_per_owner,
                    };
                    claim = Some(Box::pin(claim_jobs(
                        self.pool.clone(),
                        ring.clone(),
                        req,
                        self.ledger.clone(),
                    )));
                }
            }
            tokio::select! {
                res = async { claim.as_mut().expect("guarded").await }, if claim.is_some() => {
                    claim = None;
                    match res {
                        Ok((jobs, asked)) => {
                            db_failures = 0;
                            if jobs.len() < asked {
                                debug!(queue = %self.queue.name, got = jobs.len(), asked, "claim came back short");
                                dry = true;
                                poll.as_mut().reset(tokio::time::Instant::now() + self.poll_interval);
                            }
                            buffer.extend(jobs);
                        }
                        Err(e) => {
                            db_failures += 1;
                            let pause = Duration::from_millis(100 * u64::from(db_failures.min(50)));
                            warn!(queue = %self.queue.name, error = %e, ?pause, "claiming jobs failed; retrying");
                            dry = true;
                            poll.as_mut().reset(tokio::time::Instant::now() + pause);
                        }
                    }
                }
                p = slots.clone().acquire_owned(), if !buffer.is_empty() || (claim.is_none() && !dry) => {
                    // A slot is free: loop round to fill it.
                    drop(p);
                }
                _ = self.waker.notified(), if dry && db_failures == 0 => dry = false,
                _ = &mut poll, if dry => dry = false,
                _ = stop.cancelled() => break,
            }
        }
        // A claim still in flight holds jobs too: take them to hand back.
        if let Some(c) = claim.take()
            && let Ok((jobs, _)) = c.await
        {
            buffer.extend(jobs);
        }
        let mut abandoned: Vec<Uuid> = buffer.iter().map(|j| j.id).collect();
        // Stop claiming; give running jobs their grace period.
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = running.join_next_with_id() => match next {
                    Some(Ok((id, ()))) => { running_ids.remove(&id); }
                    Some(Err(e)) => { running_ids.remove(&e.id()); }
                    None => break,
                },
                _ = &mut deadline => {
                    running.abort_all();
                    break;
                }
            }
        }
        abandoned.extend(running_ids.into_values());
        abandoned
    }

    fn run_job(
        &self,
        job: Claimed,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let handler = self.handlers.get(&job.kind).cloned();
        let m = &METRICS;
        m.jobs
            .with_label_values(&[&job.queue, &job.kind, "started"])
            .inc();
        let waited = (chrono::Utc::now() - job.run_at)
            .to_std()
            .unwrap_or_default();
        m.job_pickup_seconds
            .with_label_values(&[&job.queue])
            .observe(waited.as_secs_f64());
        let done = self.done.clone();
        let backoff = self.backoff;
        let span = info_span!(
            "job",
            job_id = %job.id,
            queue = %job.queue,
            kind = %job.kind,
            attempt = job.attempt,
            connection_id = tracing::field::Empty,
        );
        let ctx = JobContext {
            id: job.id,
            queue: job.queue,
            kind: job.kind,
            payload: job.payload,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            owner: job.owner,
            throttle_key: job.throttle_key,
            worker_id: self.worker_id,
            started_at: job.started_at,
            pool: self.pool.clone(),
        };
        async move {
            let started = std::time::Instant::now();
            let result = match handler {
                Some(h) => h.handle(&ctx).await,
                None => Err(JobError::permanent(format!(
                    "no handler for job kind {:?}",
                    ctx.kind
                ))),
            };
            let outcome = match result {
                Ok(()) => Outcome::Succeeded,
                Err(JobError::Snooze { after, reason }) => {
                    debug!(reason = %reason, ?after, "job snoozed");
                    let until =
                        chrono::Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
                    Outcome::Snoozed {
                        delay: after,
                        waiting: serde_json::json!({ "reason": reason, "until": until }),
                    }
                }
                Err(JobError::Cancelled) => Outcome::Failed {
                    state: "cancelled",
                    delay: Duration::ZERO,
                    message: "cancelled on request".into(),
                },
                Err(JobError::Permanent { message }) => {
                    warn!(error = %message, "job failed permanently");
                    Outcome::Failed {
                        state: "failed",
                        delay: Duration::ZERO,
                        message,
                    }
                }
                Err(JobError::Retry { message, after }) => {
                    if ctx.attempt >= ctx.max_attempts {
                        warn!(error = %message, "job failed on its last attempt");
                        Outcome::Failed {
                            state: "failed",
                            delay: Duration::ZERO,
                            message,
                        }
                    } else {
                        let delay = after.unwrap_or_else(|| backoff.delay(ctx.attempt));
                        debug!(error = %message, ?delay, "job will be retried");
                        Outcome::Failed {
                            state: "retryable",
                            delay,
                            message,
                        }
                    }
                }
            };
            let event = match &outcome {
                Outcome::Succeeded => "succeeded",
                Outcome::Snoozed { .. } => "snoozed",
                Outcome::Failed {
                    state: "retryable", ..
                } => "retried",
                Outcome::Failed { state, .. } => state,
            };
            METRICS
                .jobs
                .with_label_values(&[&ctx.queue, &ctx.kind, event])
                .inc();
            METRICS
                .job_duration_seconds
                .with_label_values(&[&ctx.queue, &ctx.kind, event])
                .observe(started.elapsed().as_secs_f64());
            // The outcome is written by the completer in a batch; the slot is
            // free once it is queued for that (a slow completer thus slows
            // claiming instead of piling up finished-but-unrecorded jobs).
            if done
                .send(Completion {
                    id: ctx.id,
                    started_at: ctx.started_at,
                    outcome,
                })
                .await
                .is_err()
            {
                error!("job outcome dropped: the completer has stopped");
            }
            drop(permit);
        }
        .instrument(span)
    }
}

/// Writes outcomes in batches; retries on database errors so no outcome is
/// lost while the database is briefly away. Written outcomes go to the
/// ledger, which writes them again should a crash undo them.
async fn complete(
    pool: PgPool,
    worker_id: Uuid,
    batch: usize,
    ledger: Ledger,
    mut rx: mpsc::Receiver<Completion>,
) {
    let mut buf: Vec<Completion> = Vec::with_capacity(batch);
    while rx.recv_many(&mut buf, batch).await > 0 {
        let mut attempt = 0u32;
        while let Err(e) = write_outcomes(&pool, worker_id, &buf).await {
            attempt += 1;
            let pause = Duration::from_millis(100 * u64::from(attempt.min(50)));
            warn!(error = %e, ?pause, "recording job outcomes failed; retrying");
            tokio::time::sleep(pause).await;
        }
        ledger.written(buf.drain(..));
    }
}

/// Writes outcomes, fenced by each claim's lease token: one statement for
/// the successes, one for the rest.
pub(crate) async fn write_outcomes(
    pool: &PgPool,
    worker_id: Uuid,
    done: &[Completion],
) -> Result<(), sqlx::Error> {
    let (mut s_ids, mut s_starts) = (Vec::new(), Vec::new());
    let (mut f_ids, mut f_states, mut f_delays, mut f_msgs, mut f_starts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut z_ids, mut z_delays, mut z_waiting, mut z_starts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in done {
        match &c.outcome {
            Outcome::Succeeded => {
                s_ids.push(c.id);
                s_starts.push(c.started_at);
            }
            Outcome::Failed {
                state,
                delay,
                message,
            } => {
                f_ids.push(c.id);
                f_states.push(*state);
                f_delays.push(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                f_msgs.push(message.as_str());
                f_starts.push(c.started_at);
            }
            Outcome::Snoozed { delay, waiting } => {
                z_ids.push(c.id);
                z_delays.push(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                z_waiting.push(waiting.clone());
                z_starts.push(c.started_at);
            }
        }
    }
    if !z_ids.is_empty() {
        sqlx::query(include_str!("../queries/complete_snoozed.sql"))
            .bind(&z_ids)
            .bind(&z_delays)
            .bind(&z_waiting)
            .bind(worker_id)
            .bind(&z_starts)
            .execute(pool)
            .await?;
    }
    if !s_ids.is_empty() {
        sqlx::query(include_str!("../queries/complete_succeeded.sql"))
            .bind(&s_ids)
            .bind(worker_id)
            .bind(&s_starts)
            .execute(pool)
            .await?;
    }
    if !f_ids.is_empty() {
        sqlx::query(include_str!("../queries/complete_failed.sql"))
            .bind(&f_ids)
            .bind(&f_states)
            .bind(&f_delays)
            .bind(&f_msgs)
            .bind(worker_id)
            .bind(&f_starts)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Wakes the fetcher of a queue when a job is inserted into it.
async fn listen(pool: PgPool, wakers: Arc<HashMap<String, Arc<Notify>>>, stop: CancellationToken) {
    crate::listen_channel(
        pool,
        NOTIFY_CHANNEL,
        move |payload| match payload.and_then(|q| wakers.get(q)) {
            Some(w) => w.notify_one(),
            None if payload.is_none() => wakers.values().for_each(|w| w.notify_one()),
            None => {}
        },
        stop,
    )
    .await;
}

struct Heartbeat {
    pool: PgPool,
    id: Uuid,
    name: String,
    ledger: Ledger,
    hook: Option<Arc<dyn AbandonHook>>,
}

/// Every `every`: says this worker is alive, then reconciles the claims the
/// database says it holds with the ones it really runs (see `ledger`).
async fn heartbeat(hb: Heartbeat, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = sqlx::query(include_str!("../queries/register_worker.sql"))
            .bind(hb.id)
            .bind(&hb.name)
            .execute(&hb.pool)
            .await
        {
            warn!(error = %e, "heartbeat failed");
            continue;
        }
        // Released claims are counted as `released` job events; outcomes
        // written again are logged by the ledger.
        if let Err(e) = hb.ledger.reconcile(&hb.pool, hb.id, hb.hook.as_ref()).await {
            warn!(error = %e, "reconciling held jobs failed");
        }
    }
}

/// Every `every` until `stop`: hands back the jobs of dead workers. Every
/// worker pool runs this, and so does the scheduler role. (Pruning is the
/// scheduler's prune cycle: once per tick for the cluster.)
pub async fn maintain(
    pool: PgPool,
    timeout: Duration,
    every: Duration,
    hook: Option<Arc<dyn AbandonHook>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match rescue_once(&pool, timeout, hook.as_ref()).await {
            Ok(0) => {}
            Ok(n) => info!(
                rescued = n,
                "rescued jobs from workers that stopped heartbeating"
            ),
            Err(e) => warn!(error = %e, "orphan rescue failed"),
        }
    }
}

/// Hands back jobs held by workers silent for longer than `timeout`, and
/// tells `hook` in the same transaction. Returns how many were rescued.
pub async fn rescue_once(
    pool: &PgPool,
    timeout: Duration,
    hook: Option<&Arc<dyn AbandonHook>>,
) -> Result<usize, QueueError> {
    let secs = timeout.as_secs_f64();
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as(include_str!("../queries/rescue_orphans.sql"))
        .bind(secs)
        .fetch_all(&mut *tx)
        .await?;
    let rescued = given_back(
        &mut tx,
        rows,
        "the worker running this job stopped heartbeating",
        "rescued",
        hook,
    )
    .await?;
    sqlx::query(include_str!("../queries/prune_workers.sql"))
        .bind(secs * 10.0)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(rescued)
}

/// Jobs taken from their worker without an outcome, as rows `(id, queue,
/// kind, attempt)` of the statement that took them on `conn`: counted under
/// `event`, reported to `hook` (which closes their attempts in the audit
/// trail) and their queues woken, all in that statement's transaction.
/// Returns how many.
pub(crate) async fn given_back(
    conn: &mut sqlx::PgConnection,
    rows: Vec<(Uuid, String, String, i32)>,
    reason: &str,
    event: &str,
    hook: Option<&Arc<dyn AbandonHook>>,
) -> Result<usize, QueueError> {
    let jobs: Vec<AbandonedJob> = rows
        .into_iter()
        .map(|(id, queue, kind, attempt)| {
            METRICS
                .jobs
                .with_label_values(&[&queue, &kind, event])
                .inc();
            AbandonedJob {
                id,
                queue,
                kind,
                attempt,
                reason: reason.to_owned(),
            }
        })
        .collect();
    if let Some(hook) = hook {
        hook.abandoned(&mut *conn, &jobs).await?;
    }
    notify(&mut *conn, jobs.iter().map(|j| j.queue.as_str())).await?;
    Ok(jobs.len())
}

/// Wakes the workers of `queues` (each once), when `conn`'s transaction
/// commits.
pub(crate) async fn notify<'a>(
    conn: &mut sqlx::PgConnection,
    queues: impl IntoIterator<Item = &'a str>,
) -> Result<(), sqlx::Error> {
    let mut queues: Vec<&str> = queues.into_iter().collect();
    queues.sort_unstable();
    queues.dedup();
    for q in queues {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(q)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
