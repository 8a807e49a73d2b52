//! Benchmarks that print one JSON line per run (see docs/benchmarks.md).

pub mod incremental;
pub mod soak;

use dashtam_db::Db;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dashtam_domain::jobs::{JobArgs, SyncJob};
use dashtam_domain::model::ProviderKind;
use dashtam_domain::ports::ProviderCredentials;
use dashtam_domain::{ConnectionId, UserId};
use dashtam_queue::{JobState, NewJob, Queue};
use dashtam_sandbox::{Faults, ItemSpec, Sandbox, SandboxConfig};
use dashtam_store::connections::NewConnection;
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use dashtam::app::{self, Daemon, Role};
use dashtam::config::{Config, QueueSection};
use dashtam::secrets::Secrets;

pub struct SyncBenchOptions {
    pub database_url: String,
    pub connections: u32,
    /// Per connection.
    pub transactions: u32,
    pub accounts: u32,
    pub concurrency: usize,
}

/// What the sync benchmarks share: a re-created, migrated database, the
/// sandbox provider on a loopback port (with `faults`), and a daemon
/// configured against it whose sync queue runs `concurrency` jobs at once,
/// claims as many and prefetches `prefetch`, with no provider budget (the
/// engine's throughput is measured, not Plaid's 40 calls/s) and no
/// per-owner cap (every bench connection belongs to one user).
pub(crate) struct SyncRig {
    pub pool: Db,
    pub sandbox: Sandbox,
    /// Stops the sandbox (and the daemon, once started with it).
    pub shutdown: CancellationToken,
    pub daemon: Daemon,
}

impl SyncRig {
    pub(crate) async fn new(
        mut config: Config,
        url: &str,
        concurrency: usize,
        prefetch: usize,
        faults: Faults,
    ) -> anyhow::Result<Self> {
        dashtam_store::migrate::recreate_database(url)
            .await
            .with_context(|| format!("re-creating {}", app::redact(url)))?;
        let pool = app::connect(&config, url).await?;
        app::migrate(&pool).await?;
        let shutdown = CancellationToken::new();
        let sandbox = Sandbox::new(SandboxConfig::default());
        sandbox.set_faults(faults);
        let sandbox_config = sandbox.config();
        let stop = shutdown.clone();
        let addr = sandbox
            .clone()
            .spawn(
                "127.0.0.1:0".parse()?,
                async move { stop.cancelled().await },
            )
            .await?;
        config.use_sandbox(&format!("http://{addr}"), &sandbox_config);
        config.worker.poll_interval_ms = 50.into();
        config.budgets.providers.clear();
        config.worker.queues.insert(
            SyncJob::KIND.queue().into(),
            QueueSection {
                concurrency,
                fetch_batch: concurrency,
                prefetch,
                max_running_per_owner: 0,
            },
        );
        config.database.max_connections =
            config.database.max_connections.max(concurrency as u32 + 8);
        let secrets = Secrets::ephemeral(&config)?;
        let daemon = Daemon::new(config, pool.clone(), &secrets)?;
        Ok(Self {
            pool,
            sandbox,
            shutdown,
            daemon,
        })
    }

    /// Links `n` new sandbox items of `spec` as `user`'s Plaid connections,
    /// one by one through the store (as an API request would).
    pub(crate) async fn link(
        &self,
        user: &UserId,
        n: usize,
        spec: ItemSpec,
    ) -> anyhow::Result<Vec<ConnectionId>> {
        let store = self.daemon.store();
        let mut connections = Vec::with_capacity(n);
        for _ in 0..n {
            let token = self.sandbox.create_item(spec.clone());
            let conn = store
                .create_connection(NewConnection {
                    user,
                    provider: ProviderKind::Plaid,
                    credentials: &ProviderCredentials {
                        access_token: SecretString::from(token),
                        refresh_token: None,
                    },
                    access_token_expires_at: None,
                    refresh_token_expires_at: None,
                    provider_item_id: None,
                    correlation_id: None,
                })
                .await?;
            connections.push(ConnectionId(conn.id));
        }
        Ok(connections)
    }

    /// Starts the daemon's worker role.
    pub(crate) async fn start_worker(&self) -> anyhow::Result<app::Running> {
        self.daemon
            .start(
                &[Role::Worker],
                Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
                self.shutdown.clone(),
            )
            .await
    }
}

/// The brief's "sync" workload: M connections with K transactions each,
/// one sync per connection, then an immediate re-sync with nothing new.
pub async fn sync(config: Config, opts: SyncBenchOptions) -> anyhow::Result<()> {
    if opts.accounts == 0 || !opts.transactions.is_multiple_of(opts.accounts) {
        bail!("--transactions must be a multiple of --accounts");
    }
    let rig = SyncRig::new(
        config,
        &opts.database_url,
        opts.concurrency,
        0,
        Faults::default(),
    )
    .await?;
    let pool = rig.pool.clone();
    let user = UserId::parse("bench").map_err(anyhow::Error::msg)?;
    let connections = rig
        .link(
            &user,
            opts.connections as usize,
            ItemSpec {
                accounts: Some(opts.accounts),
                transactions_per_account: Some(opts.transactions / opts.accounts),
            },
        )
        .await?;
    let running = rig.start_worker().await?;
    let queue = Queue::new(pool.clone());
    let total = u64::from(opts.connections) * u64::from(opts.transactions);

    let first = round(&queue, &connections).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&pool)
        .await?;
    if stored != i64::try_from(total)? {
        bail!("expected {total} transactions stored, found {stored}");
    }
    let second = round(&queue, &connections).await?;
    let stored_again: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&pool)
        .await?;
    if stored_again != stored {
        bail!("re-sync changed the row count from {stored} to {stored_again}");
    }
    rig.shutdown.cancel();
    running.wait().await?;

    let line = json!({
        "bench": "sync",
        "connections": opts.connections,
        "transactions": total,
        "accounts_per_connection": opts.accounts,
        "concurrency": opts.concurrency,
        "sync_s": round3(first.as_secs_f64()),
        "transactions_per_s": (total as f64 / first.as_secs_f64()).round(),
        "resync_s": round3(second.as_secs_f64()),
        "resync_transactions_per_s": (total as f64 / second.as_secs_f64()).round(),
    });
    println!("{line}");
    Ok(())
}

/// The `q` quantile of what a histogram observed between two readings of
/// its cumulative buckets (`telemetry::metrics::cumulative_buckets`),
/// interpolated within its bucket (as Prometheus' histogram_quantile does).
pub(crate) fn quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let deltas: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(b, _)| b == le).map_or(0, |(_, c)| *c);
            (*le, n - was)
        })
        .collect();
    let total = deltas.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for (le, n) in deltas {
        if n as f64 >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = (rank - lower.1 as f64) / ((n - lower.1).max(1) as f64);
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, n);
    }
    None
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A sync job for each of `connections` (3 attempts each).
pub(crate) fn sync_jobs<'a>(
    connections: impl IntoIterator<Item = &'a ConnectionId>,
) -> Result<Vec<NewJob>, serde_json::Error> {
    connections
        .into_iter()
        .map(|c| {
            let mut j = NewJob::from_args(&SyncJob::new(*c))?;
            j.max_attempts = 3;
            Ok(j)
        })
        .collect()
}

/// Enqueues one sync per connection and waits until none is unfinished.
async fn round(queue: &Queue, connections: &[ConnectionId]) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    queue.enqueue_many(&sync_jobs(connections)?).await?;
    loop {
        let counts = queue.state_counts(Some(SyncJob::KIND.as_str())).await?;
        let unfinished: i64 = counts
            .iter()
            .filter(|(s, _)| !s.is_finished())
            .map(|(_, n)| n)
            .sum();
        if unfinished == 0 {
            let failed: i64 = counts
                .iter()
                .filter(|(s, _)| *s == JobState::Failed)
                .map(|(_, n)| n)
                .sum();
            if failed > 0 {
                bail!("{failed} sync job(s) failed");
            }
            return Ok(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Options of the queue benchmarks.
pub struct QueueBenchOptions {
    pub database_url: String,
    pub jobs: usize,
    pub concurrency: usize,
    pub fetch_batch: usize,
    /// Jobs scheduled a day ahead in the same queue, waiting behind.
    pub queued: usize,
    /// The drained jobs belong to this many owners in turn (0: none).
    pub owners: usize,
}

const BENCH_QUEUE: &str = "bench";
const BENCH_KIND: &str = "noop";

/// A handler that does nothing but note when it ran.
struct Noop {
    seen: std::sync::atomic::AtomicUsize,
    latencies_us: std::sync::Mutex<Vec<i64>>,
}

#[async_trait::async_trait]
impl dashtam_queue::Handler for Noop {
    async fn handle(&self, job: &dashtam_queue::JobContext) -> Result<(), dashtam_queue::JobError> {
        if let Some(t) = job
            .payload
            .get("enqueued_at_us")
            .and_then(serde_json::Value::as_i64)
        {
            let now = chrono::Utc::now().timestamp_micros();
            self.latencies_us
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(now - t);
        }
        self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

fn queue_worker_config(
    config: &Config,
    concurrency: usize,
    fetch_batch: usize,
) -> dashtam_queue::WorkerConfig {
    let mut wc = config.worker_config(format!("bench-{}", std::process::id()));
    wc.queues = vec![dashtam_queue::QueueConfig {
        name: BENCH_QUEUE.into(),
        concurrency,
        fetch_batch,
        prefetch: fetch_batch,
        max_running_per_owner: 0,
    }];
    wc
}

async fn fresh_queue_db(config: &Config, url: &str, queued: usize) -> anyhow::Result<Db> {
    dashtam_store::migrate::recreate_database(url)
        .await
        .with_context(|| format!("re-creating {}", app::redact(url)))?;
    let pool = app::connect(config, url).await?;
    app::migrate(&pool).await?;
    let queue = Queue::new(pool.clone());
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    let mut left = queued;
    while left > 0 {
        let n = left.min(50_000);
        let jobs: Vec<NewJob> = (0..n)
            .map(|_| {
                let mut j = NewJob::new(BENCH_QUEUE, BENCH_KIND, json!({}));
                j.run_at = Some(later);
                j
            })
            .collect();
        queue.enqueue_many(&jobs).await?;
        left -= n;
    }
    if queued > 0 {
        sqlx::query("VACUUM ANALYZE jobs").execute(&pool).await?;
    }
    Ok(pool)
}

/// Statistics for the planner, as autovacuum keeps them in production (not
/// timed): a table never analyzed reads as nearly empty, and the fair
/// claim's walk over owners then picks the wrong index (docs/operations.md).
async fn analyze_jobs(pool: &Db) -> anyhow::Result<()> {
    sqlx::query("ANALYZE jobs").execute(pool).await?;
    Ok(())
}

/// Whether any due job of the bench queue is still pending or running: two
/// probes shaped like the claim query, so the planner walks the same partial
/// indexes and a million jobs waiting behind cost nothing here.
async fn any_due_left(pool: &Db) -> anyhow::Result<bool> {
    let pending: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE queue = $1 AND run_at <= now()
           AND state IN ('scheduled', 'available', 'retryable')
         ORDER BY priority, run_at, id LIMIT 1",
    )
    .bind(BENCH_QUEUE)
    .fetch_optional(pool)
    .await?;
    if pending.is_some() {
        return Ok(true);
    }
    let running: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'running' AND queue = $1 LIMIT 1")
            .bind(BENCH_QUEUE)
            .fetch_optional(pool)
            .await?;
    Ok(running.is_some())
}

/// The brief's "drain" workload: bulk-enqueue N no-op jobs, then time
/// workers with concurrency C until none is pending.
pub async fn drain(config: Config, opts: QueueBenchOptions) -> anyhow::Result<()> {
    let pool = fresh_queue_db(&config, &opts.database_url, opts.queued).await?;
    let queue = Queue::new(pool.clone());
    let jobs: Vec<NewJob> = (0..opts.jobs)
        .map(|i| {
            let mut j = NewJob::new(BENCH_QUEUE, BENCH_KIND, json!({}));
            if opts.owners > 0 {
                j.owner = Some(format!("owner-{:05}", i % opts.owners));
            }
            j
        })
        .collect();
    let t0 = Instant::now();
    queue.enqueue_many(&jobs).await?;
    let enqueue_s = t0.elapsed().as_secs_f64();
    analyze_jobs(&pool).await?;

    let noop = Arc::new(Noop {
        seen: 0.into(),
        latencies_us: Vec::new().into(),
    });
    let pool_cfg = queue_worker_config(&config, opts.concurrency, opts.fetch_batch);
    let worker_db = warm(
        app::queue_pool(&config, &pool),
        config.worker.max_connections,
    )
    .await?;
    let shutdown = CancellationToken::new();
    let rss_before = peak_rss_kb();
    let t1 = Instant::now();
    let worker =
        dashtam_queue::WorkerPool::new(worker_db, pool_cfg).handle(BENCH_KIND, noop.clone());
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { worker.run(stop).await });
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if Instant::now() > deadline {
            bail!("the queue did not drain within 10 minutes");
        }
        if noop.seen.load(std::sync::atomic::Ordering::Relaxed) >= opts.jobs
            && !any_due_left(&pool).await?
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_s = t1.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await??;
    let line = json!({
        "bench": "drain",
        "jobs": opts.jobs,
        "concurrency": opts.concurrency,
        "fetch_batch": opts.fetch_batch,
        "queued_behind": opts.queued,
        "owners": opts.owners,
        "synchronous_commit": config.worker.synchronous_commit,
        "enqueue_s": round3(enqueue_s),
        "drain_s": round3(drain_s),
        "jobs_per_s": (opts.jobs as f64 / drain_s).round(),
        "peak_rss_mb": peak_rss_kb().max(rss_before) / 1024,
    });
    println!("{line}");
    Ok(())
}

/// Options of `bench fairness`.
pub struct FairnessBenchOptions {
    pub queue: QueueBenchOptions,
    /// The large owner's due jobs, ahead of everyone else's.
    pub backlog: usize,
    /// Small owners, enqueued once the backlog is draining.
    pub owners: usize,
    pub jobs_per_owner: usize,
    /// How long each job works (standing in for a provider call).
    pub job_ms: u64,
}

/// Notes when each owner's jobs start and how many finished.
struct OwnerProbe {
    job: Duration,
    first_start: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    finished: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

#[async_trait::async_trait]
impl dashtam_queue::Handler for OwnerProbe {
    async fn handle(&self, job: &dashtam_queue::JobContext) -> Result<(), dashtam_queue::JobError> {
        let owner = job.owner.clone().unwrap_or_default();
        self.first_start
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(owner.clone())
            .or_insert_with(Instant::now);
        tokio::time::sleep(self.job).await;
        *self
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(owner)
            .or_default() += 1;
        Ok(())
    }
}

/// Tenant fairness: one owner's backlog of due jobs drains; small owners
/// enqueue a few jobs each meanwhile. Reports how long after their enqueue
/// each small owner's first job started, and when all of theirs were done.
pub async fn fairness(config: Config, opts: FairnessBenchOptions) -> anyhow::Result<()> {
    let q = &opts.queue;
    let pool = fresh_queue_db(&config, &q.database_url, q.queued).await?;
    let queue = Queue::new(pool.clone());
    let owned = |owner: &str, n: usize| -> Vec<NewJob> {
        (0..n)
            .map(|_| {
                let mut j = NewJob::new(BENCH_QUEUE, BENCH_KIND, json!({}));
                j.owner = Some(owner.to_owned());
                j
            })
            .collect()
    };
    for chunk in owned("large", opts.backlog).chunks(50_000) {
        queue.enqueue_many(chunk).await?;
    }
    analyze_jobs(&pool).await?;
    let probe = Arc::new(OwnerProbe {
        job: Duration::from_millis(opts.job_ms),
        first_start: Default::default(),
        finished: Default::default(),
    });
    let (shutdown, task) = start_worker(&config, &pool, q, probe.clone()).await?;
    let finished = |owner: &str| -> usize {
        probe
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(owner)
            .copied()
            .unwrap_or(0)
    };
    // The backlog is draining at full speed before the small owners come.
    let warmup = (opts.backlog / 50).clamp(1, 2_000);
    while finished("large") < warmup {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let small: Vec<String> = (0..opts.owners).map(|i| format!("small-{i:03}")).collect();
    let t0 = Instant::now();
    let jobs: Vec<NewJob> = small
        .iter()
        .flat_map(|o| owned(o, opts.jobs_per_owner))
        .collect();
    queue.enqueue_many(&jobs).await?;
    let deadline = t0 + Duration::from_secs(600);
    while small.iter().any(|o| finished(o) < opts.jobs_per_owner) {
        if Instant::now() > deadline {
            bail!("the small owners' jobs did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_done_s = t0.elapsed().as_secs_f64();
    let large_done = finished("large");
    shutdown.cancel();
    task.await??;
    let starts = probe
        .first_start
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let first_us: Vec<i64> = small
        .iter()
        .map(|o| i64::try_from((starts[o] - t0).as_micros()).unwrap_or(i64::MAX))
        .collect();
    let pct = percentiles(first_us);
    let line = json!({
        "bench": "fairness",
        "backlog": opts.backlog,
        "small_owners": opts.owners,
        "jobs_per_small_owner": opts.jobs_per_owner,
        "job_ms": opts.job_ms,
        "concurrency": q.concurrency,
        "fetch_batch": q.fetch_batch,
        "queued_behind": q.queued,
        "first_start_p50_s": round3(pct(0.5) / 1000.0),
        "first_start_max_s": round3(pct(1.0) / 1000.0),
        "small_all_done_s": round3(all_done_s),
        "backlog_left": opts.backlog - large_done,
    });
    println!("{line}");
    Ok(())
}

type WorkerTask = tokio::task::JoinHandle<Result<(), dashtam_queue::QueueError>>;

/// A worker pool on the bench queue (its connections opened first, as a
/// daemon's are), running `handler` until the returned token is cancelled.
async fn start_worker(
    config: &Config,
    pool: &Db,
    opts: &QueueBenchOptions,
    handler: Arc<dyn dashtam_queue::Handler>,
) -> anyhow::Result<(CancellationToken, WorkerTask)> {
    let shutdown = CancellationToken::new();
    let worker = dashtam_queue::WorkerPool::new(
        warm(app::queue_pool(config, pool), config.worker.max_connections).await?,
        queue_worker_config(config, opts.concurrency, opts.fetch_batch),
    )
    .handle(BENCH_KIND, handler);
    let stop = shutdown.clone();
    Ok((
        shutdown,
        tokio::spawn(async move { worker.run(stop).await }),
    ))
}

/// The brief's "latency" workload: an idle worker; 500 jobs enqueued one at
/// a time, 10 ms apart, each carrying its enqueue time.
pub async fn latency(config: Config, opts: QueueBenchOptions) -> anyhow::Result<()> {
    let pool = fresh_queue_db(&config, &opts.database_url, opts.queued).await?;
    let queue = Queue::new(pool.clone());
    let noop = Arc::new(Noop {
        seen: 0.into(),
        latencies_us: Vec::new().into(),
    });
    let (shutdown, task) = start_worker(&config, &pool, &opts, noop.clone()).await?;
    // Let the worker register, LISTEN and go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    // How long each enqueue (INSERT + durable commit) took: it is inside the
    // pickup latency, so it is reported beside it.
    let mut enqueue_us = Vec::with_capacity(opts.jobs);
    for _ in 0..opts.jobs {
        tick.tick().await;
        let t = Instant::now();
        let payload = json!({ "enqueued_at_us": chrono::Utc::now().timestamp_micros() });
        queue
            .enqueue(NewJob::new(BENCH_QUEUE, BENCH_KIND, payload))
            .await?;
        enqueue_us.push(i64::try_from(t.elapsed().as_micros()).unwrap_or(i64::MAX));
    }
    while noop.seen.load(std::sync::atomic::Ordering::Relaxed) < opts.jobs {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    task.await??;
    let pickup = noop
        .latencies_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let pct = percentiles(pickup);
    let enq = percentiles(enqueue_us);
    let line = json!({
        "bench": "latency",
        "jobs": opts.jobs,
        "concurrency": opts.concurrency,
        "queued_behind": opts.queued,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "enqueue_p99_ms": enq(0.99),
        "enqueue_max_ms": enq(1.0),
    });
    println!("{line}");
    Ok(())
}

/// Percentile lookup (in ms) over microsecond samples.
fn percentiles(mut us: Vec<i64>) -> impl Fn(f64) -> f64 {
    us.sort_unstable();
    move |p: f64| {
        if us.is_empty() {
            return 0.0;
        }
        let i = ((us.len() as f64 * p).ceil() as usize).clamp(1, us.len()) - 1;
        round3(us[i] as f64 / 1000.0)
    }
}

/// Opens the pool's connections up front, as a long-running daemon's pool
/// would have them open, so connection set-up is not timed.
async fn warm(pool: Db, n: u32) -> anyhow::Result<Db> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.acquire().await?);
    }
    drop(held);
    Ok(pool)
}

/// Peak resident set size of this process so far (Linux), in KiB.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `bench schedule`: N active connections, every one due (access token
/// expiring within the lead time, never synced); times one tick of the
/// token refresh sweep, then one of the stale-sync sweep. Each enqueues a
/// job per connection in the tick's transaction.
pub async fn schedule(
    config: Config,
    database_url: &str,
    connections: usize,
) -> anyhow::Result<()> {
    dashtam_store::migrate::recreate_database(database_url)
        .await
        .with_context(|| format!("re-creating {}", app::redact(database_url)))?;
    let pool = app::connect(&config, database_url).await?;
    app::migrate(&pool).await?;
    let secrets = Secrets::ephemeral(&config)?;
    let store = dashtam_store::Store::new(pool.clone(), secrets.cipher.clone());
    import_due_connections(&store, connections).await?;
    sqlx::query("VACUUM ANALYZE provider_connections")
        .execute(&pool)
        .await?;
    // Every bench connection belongs to one user: the sweep's cost is
    // measured over all of them.
    let mut settings = config.scheduler_settings("bench".into());
    settings.syncs_per_user = 0;
    let scheduler = dashtam_scheduler::Scheduler::new(store, settings);
    let tick = chrono::Utc::now();
    let mut line = json!({ "bench": "schedule", "connections": connections });
    for (cycle, key) in [
        (dashtam_scheduler::Cycle::TokenRefresh, ""),
        (dashtam_scheduler::Cycle::StaleSync, "stale_sync_"),
    ] {
        let started = Instant::now();
        let outcome = scheduler
            .process(cycle, tick, 1)
            .await?
            .context("the tick was already processed")?;
        line[format!("{key}sweep_s")] = round3(started.elapsed().as_secs_f64()).into();
        line[format!("{key}enqueued")] = outcome.enqueued.into();
        if outcome.enqueued != connections as u64 {
            bail!("{cycle:?} enqueued {} of {connections}", outcome.enqueued);
        }
    }
    println!("{line}");
    Ok(())
}

/// `connections` active Schwab-style connections of user `bench`, every one
/// due for a refresh and a sync; returns their ids.
async fn import_due_connections(
    store: &dashtam_store::Store,
    connections: usize,
) -> anyhow::Result<Vec<ConnectionId>> {
    let user = UserId::parse("bench").map_err(anyhow::Error::msg)?;
    let soon = chrono::Utc::now() + chrono::Duration::minutes(1);
    let later = chrono::Utc::now() + chrono::Duration::days(7);
    let mut ids = Vec::with_capacity(connections);
    let mut left = connections;
    while left > 0 {
        let n = left.min(20_000);
        let rows: Vec<_> = (0..n)
            .map(|i| dashtam_store::connections::Imported {
                credentials: ProviderCredentials {
                    access_token: format!("bench-access-{i}").into(),
                    refresh_token: Some(format!("bench-refresh-{i}").into()),
                },
                access_token_expires_at: Some(soon),
                refresh_token_expires_at: Some(later),
            })
            .collect();
        ids.extend(
            store
                .import_connections(&user, ProviderKind::Schwab, &rows)
                .await?,
        );
        left -= n;
    }
    Ok(ids)
}

pub struct ApiBenchOptions {
    pub database_url: String,
    pub connections: usize,
    pub duration_secs: u64,
    pub wrk_connections: usize,
}

/// `bench api`: the API alone (no workers, rate limits off) in this process,
/// and `wrk` (Debian's package) against it from another: first
/// `POST /api/v1/connections/{id}/syncs`, each request for the next of
/// `connections` connections (so unique keys do not short-circuit), then
/// `GET /api/v1/jobs/{id}` of one job, then of every job in turn. One JSON
/// line per run.
pub async fn api(mut config: Config, opts: ApiBenchOptions) -> anyhow::Result<()> {
    dashtam_store::migrate::recreate_database(&opts.database_url)
        .await
        .with_context(|| format!("re-creating {}", app::redact(&opts.database_url)))?;
    let pool = app::connect(&config, &opts.database_url).await?;
    app::migrate(&pool).await?;
    config.rate_limit.enabled = false;
    config.database.max_connections = config.database.max_connections.max(32);
    let secrets = Secrets::ephemeral(&config)?;
    let jwt = secrets.jwt.clone().context("jwt secret")?.current();
    let daemon = Daemon::new(config.clone(), pool.clone(), &secrets)?;
    let ids = import_due_connections(&daemon.store(), opts.connections).await?;
    let dir = std::env::temp_dir().join(format!("dashtam-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let list = dir.join("connections.txt");
    std::fs::write(
        &list,
        ids.iter().map(|i| format!("{i}\n")).collect::<String>(),
    )?;
    let shutdown = CancellationToken::new();
    let running = daemon
        .start(
            &[Role::Api],
            Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
            shutdown.clone(),
        )
        .await?;
    let base = format!("http://{}", running.api_addr.context("api address")?);
    let token = dashtam_api::issue_token(
        &jwt,
        &config.auth.issuer,
        &config.auth.audience,
        "bench",
        dashtam_api::Role::Client,
        Duration::from_secs(3600),
    )?;
    let enqueue = rotating_script(
        &dir,
        "enqueue",
        &list,
        "POST",
        "/api/v1/connections/",
        "/syncs",
        &token,
    )?;
    let wrk = |script: Option<&std::path::Path>, path: &str| -> anyhow::Result<serde_json::Value> {
        let mut cmd = std::process::Command::new("wrk");
        cmd.args(["-t2", "--latency"])
            .arg(format!("-c{}", opts.wrk_connections))
            .arg(format!("-d{}s", opts.duration_secs))
            .args(["-H", &format!("Authorization: Bearer {token}")]);
        if let Some(s) = script {
            cmd.arg("-s").arg(s);
        }
        let out = cmd
            .arg(format!("{base}{path}"))
            .output()
            .context("running wrk (apt-get install wrk)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        }
        parse_wrk(&text)
    };
    let enqueue_line = wrk(Some(&enqueue), "/")?;
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_all")
        .fetch_one(&pool)
        .await?;
    let job_ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM jobs_all")
        .fetch_all(&pool)
        .await?;
    let job = job_ids.first().context("no job was enqueued")?;
    let status_line = wrk(None, &format!("/api/v1/jobs/{job}"))?;
    // The same read, a different job each request (every job enqueued
    // above), as many clients polling their own jobs do: no row stays hot.
    let job_list = dir.join("jobs.txt");
    std::fs::write(
        &job_list,
        job_ids.iter().map(|i| format!("{i}\n")).collect::<String>(),
    )?;
    let statuses = rotating_script(
        &dir,
        "status",
        &job_list,
        "GET",
        "/api/v1/jobs/",
        "",
        &token,
    )?;
    let statuses_line = wrk(Some(&statuses), "/")?;
    shutdown.cancel();
    running.wait().await?;
    std::fs::remove_dir_all(&dir)?;
    for (endpoint, ids, mut line) in [
        (
            "POST /api/v1/connections/{id}/syncs",
            ids.len(),
            enqueue_line,
        ),
        ("GET /api/v1/jobs/{id}", 1, status_line),
        ("GET /api/v1/jobs/{id}", job_ids.len(), statuses_line),
    ] {
        line["bench"] = "api".into();
        line["endpoint"] = endpoint.into();
        line["distinct_ids"] = ids.into();
        line["wrk_connections"] = opts.wrk_connections.into();
        line["duration_s"] = opts.duration_secs.into();
        if endpoint.starts_with("POST") {
            line["jobs_created"] = jobs.into();
        }
        println!("{line}");
    }
    Ok(())
}

/// A wrk script whose requests go to `<prefix><id><suffix>` for the ids of
/// `list` in turn (each of wrk's two threads starting on its own half), as
/// `token`'s caller.
fn rotating_script(
    dir: &std::path::Path,
    name: &str,
    list: &std::path::Path,
    method: &str,
    prefix: &str,
    suffix: &str,
    token: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(
        &path,
        format!(
            r#"local ids = {{}}
for line in io.lines("{list}") do ids[#ids + 1] = line end
local n = 0
local threads = 0
function setup(thread) thread:set("offset", threads); threads = threads + 1 end
-- wrk runs 2 threads (-t2): each starts on its own half of the list.
function init(args) n = offset * math.floor(#ids / 2) end
request = function()
  n = n + 1
  local id = ids[(n % #ids) + 1]
  return wrk.format("{method}", "{prefix}" .. id .. "{suffix}",
    {{["Authorization"] = "Bearer {token}"}})
end
"#,
            list = list.display()
        ),
    )?;
    Ok(path)
}

/// Requests/s, latency percentiles and non-2xx counts from `wrk --latency`.
fn parse_wrk(text: &str) -> anyhow::Result<serde_json::Value> {
    let ms = |v: &str| -> Option<f64> {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
        let n: f64 = num.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => return None,
        })
    };
    let mut line = json!({});
    for l in text.lines().map(str::trim) {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => line["requests_per_s"] = v.parse::<f64>()?.round().into(),
            ["50%", v] => line["p50_ms"] = ms(v).into(),
            ["90%", v] => line["p90_ms"] = ms(v).into(),
            ["99%", v] => line["p99_ms"] = ms(v).into(),
            ["Non-2xx", "or", "3xx", "responses:", v] => line["non_2xx"] = v.parse::<u64>()?.into(),
            [n, "requests", "in", ..] => line["requests"] = n.parse::<u64>()?.into(),
            _ => {}
        }
    }
    if line.get("requests_per_s").is_none() {
        bail!("no figures in wrk's output: {text}");
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_within_the_bucket_between_two_readings() {
        let before = [(0.001, 10), (0.002, 10), (f64::INFINITY, 10)];
        let after = [(0.001, 60), (0.002, 110), (f64::INFINITY, 110)];
        // 100 new claims: 50 up to 1 ms, 50 in (1, 2] ms.
        assert_eq!(quantile(&before, &after, 0.5), Some(0.001));
        let p99 = quantile(&before, &after, 0.99).unwrap();
        assert!((p99 - 0.00198).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&after, &after, 0.5), None);
    }
}
