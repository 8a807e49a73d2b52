//! The worker runtime, named for what each part does (the split River and
//! Oban use):
//!
//! * `config`: per-queue and per-pool settings;
//! * `context`: what handlers implement and receive ([`Handler`],
//!   [`ArgsHandler`], [`JobContext`], [`JobError`]);
//! * `producer`: claims due jobs per queue (fairly between owners) and
//!   keeps a queue's slots busy;
//! * `executor`: runs one claimed job's handler and turns its result into
//!   an outcome;
//! * `completer`: writes outcomes in batches, fenced by each claim's lease;
//! * `rescuer`: hands back the jobs of dead workers;
//! * this module: the pool that starts them all, its LISTEN loop and its
//!   heartbeat.

mod completer;
mod config;
mod context;
mod executor;
mod producer;
mod rescuer;

use dashtam_db::Db;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use dashtam_telemetry::metrics::METRICS;

use crate::JobState;
use crate::fair::{self, ClaimRequest, Claimed, OwnerRing};
use crate::ledger::Ledger;
use crate::{AbandonHook, AbandonedJob, Backoff, NOTIFY_CHANNEL, QueueError};
use dashtam_domain::jobs::JobArgs;
use serde::de::DeserializeOwned;

pub(crate) use completer::{Completion, Outcome, write_outcomes};
pub use config::{QueueConfig, Retention, WorkerConfig};
pub use context::{ArgsHandler, Handler, JobContext, JobError};
pub(crate) use rescuer::{given_back, notify};
pub use rescuer::{maintain, rescue_once};

use completer::complete;
use context::Typed;
use producer::Fetcher;

/// A pool of workers over one or more queues, in one process.
pub struct WorkerPool {
    pool: Db,
    config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn Handler>>,
    abandon_hook: Option<Arc<dyn AbandonHook>>,
    id: Uuid,
}

impl WorkerPool {
    pub fn new(pool: impl Into<Db>, config: WorkerConfig) -> Self {
        let pool = pool.into();
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

    /// Runs jobs of `A`'s kind with `handler`, which receives them parsed.
    pub fn work<A>(self, handler: Arc<dyn ArgsHandler<A>>) -> Self
    where
        A: JobArgs + DeserializeOwned + Send + 'static,
    {
        self.handle(A::KIND.as_str(), Arc::new(Typed { handler }))
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
        sqlx::query_file!("queries/register_worker.sql", self.id, self.config.name)
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
            let rows = sqlx::query_file!("queries/hand_back.sql", &handed_back, self.id)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|r| (r.id, r.queue, r.kind, r.attempt))
                .collect();
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
        sqlx::query_file!("queries/unregister_worker.sql", self.id)
            .execute(&self.pool)
            .await?;
        info!(worker_id = %self.id, "worker pool stopped");
        Ok(())
    }
}

/// Wakes the fetcher of a queue when a job is inserted into it.
async fn listen(pool: Db, wakers: Arc<HashMap<String, Arc<Notify>>>, stop: CancellationToken) {
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
    pool: Db,
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
        if let Err(e) = sqlx::query_file!("queries/register_worker.sql", hb.id, hb.name)
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
