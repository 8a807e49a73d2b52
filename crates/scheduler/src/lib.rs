//! The scheduler role: periodic cycles (token refresh sweep, stale sync
//! sweep, pruning) run once per tick for the whole cluster.
//!
//! Every scheduler process competes for one lease (`dashtam_queue::leadership`);
//! the holder evaluates the cycles' cron schedules and processes each due
//! tick, oldest first, catching up ticks missed while nobody led. A tick's
//! row is inserted in the transaction that enqueues its jobs, so a tick is
//! processed exactly once even if two processes believe they lead.
//!
//! Architecture invariant: no SQL here; sweeps are `store::sweeps`, the
//! lease and ticks are `queue::leadership`, and jobs are enqueued with
//! `queue::enqueue_many_in` inside the tick's transaction.

use dashtam_db::Db;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashtam_domain::jobs::{SyncJob, TokenRefreshJob};
use dashtam_domain::model::ProviderKind;
use dashtam_queue::leadership::{self, LEASE};
use dashtam_queue::{NewJob, QueueError, Retention, enqueue_many_in};
use dashtam_store::{Store, StoreError, sweeps};
use dashtam_telemetry::metrics::METRICS;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("a job's arguments do not serialize: {0}")]
    Args(#[from] serde_json::Error),
}

pub use dashtam_domain::schedule::Cycle;

/// One enabled cycle and when it runs.
#[derive(Clone, Debug)]
pub struct CycleSpec {
    pub cycle: Cycle,
    pub schedule: cron::Schedule,
}

pub use cron::Schedule;

/// `cron`: six fields with seconds (`0 */5 * * * *`), or seven with years.
pub fn parse_cron(cron: &str) -> Result<Schedule, String> {
    Schedule::from_str(cron).map_err(|e| format!("{cron:?} is not a cron expression: {e}"))
}

#[derive(Clone, Debug)]
pub struct SchedulerSettings {
    /// This process's name in the lease (host and pid).
    pub holder: String,
    pub lease_ttl: Duration,
    pub renew_every: Duration,
    /// Most missed ticks of one cycle caught up after nobody led; older ones
    /// are skipped (and logged).
    pub max_catch_up: usize,
    pub cycles: Vec<CycleSpec>,
    pub refresh_lead: Duration,
    pub reauth_warning: Duration,
    pub token_refresh_max_attempts: i32,
    pub sync_max_attempts: i32,
    /// How long each provider's connections may go without a sync.
    pub sync_intervals: Vec<(ProviderKind, Duration)>,
    /// Due syncs start at random times within this much of the tick.
    pub sync_spread: Duration,
    /// Most syncs one stale-sync tick enqueues for one user and provider
    /// (0: no cap); the rest wait for later ticks, longest unsynced first.
    pub syncs_per_user: u32,
    pub retention: Retention,
    pub idempotency_ttl: Duration,
}

/// What one tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickOutcome {
    pub enqueued: u64,
    pub flagged: u64,
}

pub struct Scheduler {
    pool: Db,
    store: Store,
    settings: SchedulerSettings,
}

fn span(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Scheduler {
    pub fn new(store: Store, settings: SchedulerSettings) -> Self {
        Self {
            pool: store.pool().clone(),
            store,
            settings,
        }
    }

    /// Competes for the lease and, while leading, processes due ticks,
    /// until `stop`; then steps down so another process takes over at once.
    pub async fn run(self, stop: CancellationToken) {
        let s = &self.settings;
        let mut term: Option<i64> = None;
        let mut leading_since = Utc::now();
        loop {
            let now_term = match leadership::lead(&self.pool, LEASE, &s.holder, s.lease_ttl).await {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %e, "could not renew the scheduler lease");
                    None
                }
            };
            if now_term != term {
                match now_term {
                    Some(t) => {
                        leading_since = Utc::now();
                        info!(term = t, holder = %s.holder, "this process now leads the scheduler");
                    }
                    None => info!("this process no longer leads the scheduler"),
                }
                METRICS.scheduler_leader.set(i64::from(now_term.is_some()));
                term = now_term;
            }
            let mut wait = s.renew_every;
            if let Some(t) = term {
                for spec in &s.cycles {
                    match self.catch_up(spec, t, leading_since).await {
                        Ok(next) => wait = wait.min(next),
                        Err(e) => warn!(cycle = spec.cycle.as_str(), error = %e, "cycle failed"),
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
        }
        if term.is_some() {
            METRICS.scheduler_leader.set(0);
            if let Err(e) = leadership::resign(&self.pool, LEASE, &s.holder).await {
                warn!(error = %e, "could not give the scheduler lease up");
            }
        }
    }

    /// Processes every due tick of `spec` not processed yet (by anyone);
    /// returns how long until its next tick.
    async fn catch_up(
        &self,
        spec: &CycleSpec,
        term: i64,
        leading_since: DateTime<Utc>,
    ) -> Result<Duration, ScheduleError> {
        let name = spec.cycle.as_str();
        let now = Utc::now();
        // With no history, the cluster's schedule starts when it first led.
        let from = leadership::last_tick(&self.pool, name)
            .await?
            .unwrap_or(leading_since);
        let mut due: Vec<DateTime<Utc>> = spec
            .schedule
            .after(&from)
            .take_while(|t| *t <= now)
            .take(self.settings.max_catch_up.saturating_mul(100).max(1))
            .collect();
        if due.len() > self.settings.max_catch_up {
            let skipped = due.len() - self.settings.max_catch_up;
            warn!(
                cycle = name,
                skipped, "too many missed ticks; skipping the oldest"
            );
            due.drain(..skipped);
        }
        for tick in due {
            if let Some(outcome) = self.process(spec.cycle, tick, term).await? {
                METRICS.scheduler_ticks.with_label_values(&[name]).inc();
                info!(
                    cycle = name,
                    tick = %tick,
                    enqueued = outcome.enqueued,
                    flagged = outcome.flagged,
                    "tick processed"
                );
            }
        }
        let next = spec.schedule.after(&Utc::now()).next();
        Ok(next
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .unwrap_or(self.settings.renew_every))
    }

    /// Processes one tick unless someone already did; `None` if so.
    pub async fn process(
        &self,
        cycle: Cycle,
        tick: DateTime<Utc>,
        term: i64,
    ) -> Result<Option<TickOutcome>, ScheduleError> {
        let name = cycle.as_str();
        let holder = &self.settings.holder;
        let mut tx = self.pool.begin().await?;
        if !leadership::claim_tick(&mut *tx, name, tick, holder, term).await? {
            return Ok(None);
        }
        let outcome = match cycle {
            Cycle::TokenRefresh => self.refresh_sweep(&mut tx, tick).await?,
            Cycle::StaleSync => self.stale_sync_sweep(&mut tx).await?,
            Cycle::Prune => {
                // Pruning works in small batches of its own; the tick's row
                // is committed first so no second process prunes this tick.
                tx.commit().await?;
                let outcome = self.prune().await?;
                leadership::finish_tick(&self.pool, name, tick, 0, outcome).await?;
                return Ok(Some(TickOutcome {
                    enqueued: 0,
                    flagged: outcome,
                }));
            }
        };
        leadership::finish_tick(&mut *tx, name, tick, outcome.enqueued, outcome.flagged).await?;
        tx.commit().await?;
        Ok(Some(outcome))
    }

    async fn refresh_sweep(
        &self,
        tx: &mut PgConnection,
        tick: DateTime<Utc>,
    ) -> Result<TickOutcome, ScheduleError> {
        let s = &self.settings;
        let now = Utc::now();
        let due = sweeps::refresh_due(&mut *tx, now + span(s.refresh_lead)).await?;
        let jobs: Vec<NewJob> = due
            .into_iter()
            .map(|(id, user, provider)| {
                let mut new = NewJob::from_args(&TokenRefreshJob::new(id, None))?;
                new.max_attempts = s.token_refresh_max_attempts;
                // The user the work is for sees the job in the API.
                new.owner = Some(user);
                new.throttle_key = Some(provider);
                Ok(new)
            })
            .collect::<Result<_, serde_json::Error>>()?;
        let enqueued = enqueue_many_in(&mut *tx, &jobs).await?;
        let correlation = format!(
            "tick:{}:{}",
            Cycle::TokenRefresh.as_str(),
            tick.to_rfc3339()
        );
        let flagged =
            sweeps::flag_expiring_grants(&mut *tx, now + span(s.reauth_warning), &correlation)
                .await?;
        Ok(TickOutcome { enqueued, flagged })
    }

    async fn stale_sync_sweep(&self, tx: &mut PgConnection) -> Result<TickOutcome, ScheduleError> {
        let s = &self.settings;
        let now = Utc::now();
        let spread_ms = u64::try_from(s.sync_spread.as_millis()).unwrap_or(u64::MAX);
        let mut jobs = Vec::new();
        for (provider, interval) in &s.sync_intervals {
            let due =
                sweeps::sync_due(&mut *tx, *provider, now - span(*interval), s.syncs_per_user)
                    .await?;
            for (id, user) in due {
                let mut new = NewJob::from_args(&SyncJob::new(id))?;
                new.max_attempts = s.sync_max_attempts;
                new.owner = Some(user);
                new.throttle_key = Some(provider.as_str().to_owned());
                // Jitter: 100,000 due connections become a steady trickle.
                let delay = fastrand::u64(..=spread_ms);
                new.run_at = Some(now + chrono::Duration::milliseconds(delay as i64));
                jobs.push(new);
            }
        }
        let enqueued = enqueue_many_in(&mut *tx, &jobs).await?;
        Ok(TickOutcome {
            enqueued,
            flagged: 0,
        })
    }

    /// Returns how many rows went (finished jobs and idempotency keys).
    async fn prune(&self) -> Result<u64, ScheduleError> {
        let jobs = dashtam_queue::ops::prune(&self.pool, self.settings.retention).await?;
        let keys = self
            .store
            .prune_idempotency_keys(self.settings.idempotency_ttl)
            .await?;
        Ok(jobs + keys)
    }
}
