//! Coalescing on the client side's hot paths, where many API requests at
//! once would otherwise each pay a round trip (or worse, a serialized
//! commit) of their own:
//!
//! * [`Wakeups`]: a single enqueue commits without `NOTIFY` and then asks
//!   for a wake-up, and one background task sends one `NOTIFY` per queue
//!   for everything asked since its last round. A `NOTIFY` inside the
//!   enqueuing transaction would take Postgres's global notify lock from
//!   pre-commit until the commit's WAL flush, serializing every enqueue's
//!   commit (pgbench, 32 clients: 22,400 inserts/s alone, 4,300/s with a
//!   `pg_notify` in the same transaction). Sent on its own, with
//!   `synchronous_commit` off, it waits for no flush. A wake-up lost to a crash between the
//!   commit and the `NOTIFY` costs one polling interval, never the job.
//! * [`Enqueues`]: single enqueues that arrive together go in with one
//!   statement and one commit, each still answered as created or as the
//!   pending job holding its unique key.
//! * [`Lookups`]: reads of jobs by id that arrive together are answered by
//!   one `WHERE id = ANY($1)` query.
//!
//! A batch is whatever arrived while the previous ones ran (a few run at
//! once), so a lone request goes out at once. Each starts its task on first
//! use, which ends when the last [`Queue`] clone is dropped.
//!
//! [`Queue`]: crate::Queue

use dashtam_db::Db;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::{
    Enqueued, EnqueuedRow, JobColumns, JobRecord, JobState, NOTIFY_CHANNEL, NewJob, QueueError,
    insert_jobs,
};

/// Wake-ups for queues whose new jobs committed (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Wakeups {
    tx: OnceLock<mpsc::UnboundedSender<String>>,
}

impl Wakeups {
    pub(crate) fn wake(&self, pool: &Db, queue: &str) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(send_wakeups(pool.clone(), rx));
            tx
        });
        // Only fails once the task ended, which it does only when the last
        // sender (this one) is gone.
        let _ = tx.send(queue.to_owned());
    }
}

async fn send_wakeups(pool: Db, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(first) = rx.recv().await {
        let mut queues = BTreeSet::from([first]);
        while let Ok(q) = rx.try_recv() {
            queues.insert(q);
        }
        let queues: Vec<String> = queues.into_iter().collect();
        if let Err(e) = sqlx::query_file!("queries/wake.sql", NOTIFY_CHANNEL, &queues)
            .fetch_all(&pool)
            .await
        {
            // Workers poll as well: the jobs wait one interval at most.
            tracing::warn!(error = %e, ?queues, "waking workers failed; they will poll");
        }
    }
}

/// Most requests one batch query carries.
const MAX_BATCH: usize = 256;
/// Batch queries in flight at once, per kind; while all are busy,
/// requests gather into the next batch.
const IN_FLIGHT: usize = 4;

type Batch<T, R> = Vec<(T, oneshot::Sender<R>)>;

/// Gathers requests that arrive together into batches for `run`, which
/// answers each request through its sender.
pub(crate) struct Batcher<T, R> {
    tx: OnceLock<mpsc::UnboundedSender<(T, oneshot::Sender<R>)>>,
}

impl<T, R> Default for Batcher<T, R> {
    fn default() -> Self {
        Self {
            tx: OnceLock::new(),
        }
    }
}

impl<T, R> std::fmt::Debug for Batcher<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("started", &self.tx.get().is_some())
            .finish()
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    pub(crate) async fn call<F>(
        &self,
        pool: &Db,
        item: T,
        run: fn(Db, Batch<T, R>) -> F,
    ) -> Result<R, QueueError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(gather(pool.clone(), rx, run));
            tx
        });
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(request)) = tx.send((item, reply)) {
            // The task is gone (the runtime is shutting down): a batch of one.
            run(pool.clone(), vec![request]).await;
        }
        answer.await.map_err(|_| QueueError::Stopped)
    }
}

async fn gather<T: Send + 'static, R: Send + 'static, F>(
    pool: Db,
    mut rx: mpsc::UnboundedReceiver<(T, oneshot::Sender<R>)>,
    run: fn(Db, Batch<T, R>) -> F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever arrived while waiting for a slot goes in this batch.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let run = run(pool.clone(), batch);
        tokio::spawn(async move {
            run.await;
            drop(slot);
        });
    }
}

/// Reads of jobs by id (see the module docs).
pub(crate) type Lookups = Batcher<Uuid, Result<Option<JobRecord>, QueueError>>;

pub(crate) async fn lookup(pool: Db, batch: Batch<Uuid, Result<Option<JobRecord>, QueueError>>) {
    let ids: Vec<Uuid> = batch.iter().map(|(id, _)| *id).collect();
    let rows = sqlx::query_file_as!(JobRecord, "queries/get_many.sql", &ids)
        .fetch_all(&pool)
        .await;
    match rows {
        Ok(rows) => {
            let by_id: HashMap<Uuid, JobRecord> = rows.into_iter().map(|j| (j.id, j)).collect();
            for (id, reply) in batch {
                let _ = reply.send(Ok(by_id.get(&id).cloned()));
            }
        }
        Err(e) => fail(batch, e),
    }
}

fn fail<T, R>(batch: Batch<T, Result<R, QueueError>>, e: sqlx::Error) {
    let e = Arc::new(e);
    for (_, reply) in batch {
        let _ = reply.send(Err(QueueError::Shared(e.clone())));
    }
}

/// Runs `enqueue_batch.sql` for `jobs` (unique keys distinct), with `ids`
/// for the new rows.
pub(crate) async fn insert(
    pool: &Db,
    ids: &[Uuid],
    jobs: &[&NewJob],
) -> Result<Vec<EnqueuedRow>, sqlx::Error> {
    let columns = JobColumns::of(ids, jobs);
    Ok(insert_jobs!("queries/enqueue_batch.sql", columns)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| EnqueuedRow {
            created: r.created,
            job: JobRecord {
                id: r.id,
                queue: r.queue,
                kind: r.kind,
                payload: r.payload,
                state: r.state,
                priority: r.priority,
                attempt: r.attempt,
                max_attempts: r.max_attempts,
                run_at: r.run_at,
                unique_key: r.unique_key,
                owner: r.owner,
                throttle_key: r.throttle_key,
                subject: r.subject,
                waiting: r.waiting,
                locked_by: r.locked_by,
                cancel_requested: r.cancel_requested,
                progress: r.progress,
                errors: r.errors,
                created_at: r.created_at,
                started_at: r.started_at,
                finished_at: r.finished_at,
            },
        })
        .collect())
}

/// What a batched enqueue answers: done, or the job back, to be enqueued on
/// its own (its key's winner finished while the batch ran).
pub(crate) type EnqueueAnswer = Result<Result<Enqueued, NewJob>, QueueError>;

/// Single enqueues (see the module docs).
pub(crate) type Enqueues = Batcher<NewJob, EnqueueAnswer>;

pub(crate) async fn enqueue(pool: Db, batch: Batch<NewJob, EnqueueAnswer>) {
    // One row per unique key: a later request for a key takes the first
    // one's job as the pending job it found.
    let mut first_of_key: HashMap<String, usize> = HashMap::new();
    let mut leader = Vec::with_capacity(batch.len());
    for (i, (job, _)) in batch.iter().enumerate() {
        leader.push(match &job.unique_key {
            Some(k) => *first_of_key.entry(k.clone()).or_insert(i),
            None => i,
        });
    }
    let rows: Vec<usize> = (0..batch.len()).filter(|&i| leader[i] == i).collect();
    let ids: Vec<Uuid> = rows.iter().map(|_| Uuid::now_v7()).collect();
    let jobs: Vec<&NewJob> = rows.iter().map(|i| &batch[*i].0).collect();
    let result = insert(&pool, &ids, &jobs).await;
    let found = match result {
        Ok(found) => found,
        Err(e) => return fail(batch, e),
    };
    // Each row answers the request whose id it has (created) or whose key
    // it holds (existing).
    let row_of_id: HashMap<Uuid, usize> = ids.iter().zip(&rows).map(|(id, i)| (*id, *i)).collect();
    let mut answer: HashMap<usize, EnqueuedRow> = HashMap::new();
    for row in found {
        let target = if row.created {
            row_of_id.get(&row.job.id).copied()
        } else {
            row.job
                .unique_key
                .as_ref()
                .and_then(|k| first_of_key.get(k).copied())
        };
        if let Some(i) = target {
            answer.insert(i, row);
        }
    }
    // Requests left per row: the last one takes the row, earlier ones a copy.
    let mut left: HashMap<usize, usize> = HashMap::new();
    for &l in &leader {
        *left.entry(l).or_default() += 1;
    }
    for (i, (job, reply)) in batch.into_iter().enumerate() {
        let l = leader[i];
        let n = left.entry(l).or_default();
        *n -= 1;
        let row = if *n == 0 {
            answer.remove(&l)
        } else {
            answer.get(&l).cloned()
        };
        let reply_with = match row {
            // The first request for a key gets what the row says; later
            // ones find the job the first one created or found.
            Some(row) if l == i => Ok(row.into()),
            Some(row) => Ok(Enqueued::Existing(row.job)),
            None => Err(job),
        };
        let _ = reply.send(Ok(reply_with));
    }
}
