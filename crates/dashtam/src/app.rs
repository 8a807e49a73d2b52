//! Wiring: builds the services from configuration and runs the roles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use dashtam_api::{AppState, Auth, JobSettings};
use dashtam_db::Db;
use dashtam_domain::jobs::{SyncJob, TokenRefreshJob};
use dashtam_domain::ports::LiveSecret;
use dashtam_providers::{
    PlaidClient, PlaidConfig, PlaidWebhooks, Providers, SchwabClient, SchwabConfig,
};
use dashtam_queue::{Queue, WorkerPool};
use dashtam_store::migrate::SchemaStatus;
use dashtam_store::{Cipher, Store};
use dashtam_worker::{
    AuditAbandoned, RefreshHandler, SyncHandler, SyncSettings, TokenKeeper, TokenSettings,
};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::secrets::Secrets;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API.
    Api,
    /// The job workers.
    Worker,
    /// The periodic cycles (token refresh and stale sync sweeps, pruning),
    /// led by one scheduler daemon at a time; also hands back jobs of dead
    /// workers.
    Scheduler,
}

/// This process in `queue_workers` and the scheduler lease: host and pid.
pub fn process_name() -> String {
    format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "dashtam".into()),
        std::process::id()
    )
}

/// Connects to the database named in `url`, saying which one on failure
/// (without the password): directly, or through a transaction pooler when
/// `database.transaction_pooler` is set (then with a pool of direct
/// connections from `database.direct_url` for LISTEN and migrations, if
/// one is given).
pub async fn connect(config: &Config, url: &str) -> anyhow::Result<Db> {
    let db = &config.database;
    let options = connect_options(config, url)?;
    if !db.transaction_pooler {
        let pool = open_pool(config, options.options(MAIN_SETTINGS.iter().copied()))
            .await
            .with_context(|| format!("cannot connect to the database at {}", redact(url)))?;
        return Ok(Db::direct(pool));
    }
    // A pooler refuses settings in the startup packet; they are applied
    // per transaction instead (`SET LOCAL`).
    let pool = open_pool(config, dashtam_db::pooled_options(options))
        .await
        .with_context(|| {
            format!(
                "cannot connect to the database through the pooler at {}",
                redact(url)
            )
        })?;
    let session = if db.direct_url.is_empty() {
        None
    } else {
        let direct =
            connect_options(config, &db.direct_url)?.options(MAIN_SETTINGS.iter().copied());
        Some(
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(db.acquire_timeout_secs.get())
                .connect_lazy_with(direct),
        )
    };
    Ok(Db::pooled(pool, MAIN_SETTINGS, session))
}

/// The settings the main pool's connections carry (at connect time when
/// direct, per transaction through a pooler). Our statements are short
/// OLTP ones and bulk UNNEST writes; JIT compiling them costs more than it
/// saves (it showed up as 2.6% of all CPU while ingesting).
const MAIN_SETTINGS: &[(&str, &str)] = &[("jit", "off")];

fn connect_options(config: &Config, url: &str) -> anyhow::Result<PgConnectOptions> {
    use sqlx::ConnectOptions;
    let options: PgConnectOptions = url
        .parse()
        .with_context(|| format!("the database URL {} is not valid", redact(url)))?;
    // Statements are logged (at debug) without their bind values; slow ones
    // at warn, past a threshold set for bulk writes.
    Ok(options.log_slow_statements(
        log::LevelFilter::Warn,
        config.database.slow_statement_ms.get(),
    ))
}

async fn open_pool(config: &Config, options: PgConnectOptions) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .acquire_timeout(config.database.acquire_timeout_secs.get())
        // No ping before every statement (it was a second round trip on each
        // API request, ~15 % of status-read throughput), except for a while
        // after a statement failed for a lost connection (Postgres
        // restarted): then every connection is pinged before use and the
        // dead ones are dropped (`store::health`).
        .test_before_acquire(false)
        .before_acquire(dashtam_store::health::acquire_check)
        // Open before the first request needs them: an enqueue's batch and
        // the wake-up after it each take one, and opening one (TLS and
        // all) on demand made the first jobs wait ~90 ms.
        .min_connections(2.min(config.database.max_connections))
        .connect_with(options)
        .await
}

/// The pool the worker runtime uses for its own bookkeeping (claims,
/// completions, heartbeats, progress): the same database, but with
/// `synchronous_commit` as configured (off by default). Losing the last few
/// hundred milliseconds of such commits to a Postgres crash: a lost claim is
/// fenced by its lease token, a lost completion is written again by the
/// worker's ledger (`queue::ledger`); enqueues and handlers' data (with a
/// sync's own completion) stay fully durable on the main pool.
pub fn queue_pool(config: &Config, db: &Db) -> Db {
    let sync = if config.worker.synchronous_commit {
        "on"
    } else {
        "off"
    };
    // Every statement of this pool finds its rows through an index. The
    // planner is told so: with statistics autovacuum took at a quiet moment
    // (hardly any job running) it once joined a batch of completions to the
    // whole table, seq-scanned, and a drain fell from ~30,000 to ~3,000
    // jobs/s. Without seq scans and merge joins (whose sorted input is a
    // scan of the whole primary key) what remains is the plan that fits
    // any statistics: one primary-key probe per job.
    //
    // And plans are made once per statement (generic), not per execution:
    // the claims take the claim floor, a timestamp, for which a plan made
    // for the value at hand always looks cheaper than a generic one, so
    // PostgreSQL planned each claim afresh, ~1.5–2 ms of planning for a
    // statement that runs in 0.4 ms (claim p50 1.0 → 2.1 ms in `bench
    // soak`); a generic plan of these statements is the same plan.
    let settings = [
        ("synchronous_commit", sync),
        ("enable_seqscan", "off"),
        ("enable_mergejoin", "off"),
        ("plan_cache_mode", "force_generic_plan"),
    ];
    let options = (*db.pool().connect_options()).clone();
    let pool = |options| {
        PgPoolOptions::new()
            .max_connections(config.worker.max_connections)
            .acquire_timeout(config.database.acquire_timeout_secs.get())
            .test_before_acquire(false)
            .before_acquire(dashtam_store::health::acquire_check)
            .connect_lazy_with(options)
    };
    if db.is_pooled() {
        let all: Vec<_> = MAIN_SETTINGS.iter().chain(&settings).copied().collect();
        Db::pooled(pool(options), &all, db.session().cloned())
    } else {
        Db::direct(pool(options.options(settings)))
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Refuses a database whose schema does not match this binary, unless
/// `migrate` is set and the schema is merely behind.
pub async fn ensure_schema(db: &Db, migrate: bool) -> anyhow::Result<()> {
    match dashtam_store::migrate::status(db).await? {
        SchemaStatus::Current => Ok(()),
        SchemaStatus::Behind { pending } if migrate => {
            info!(pending = pending.len(), "applying migrations");
            self::migrate(db).await
        }
        SchemaStatus::Behind { pending } => bail!(
            "the database schema is behind this release ({} migration(s) pending): \
             run `dashtam migrate` first, or start with `--migrate`",
            pending.len()
        ),
        SchemaStatus::Ahead { unknown } => bail!(
            "the database was migrated by a newer release ({} migration(s) unknown to this binary): \
             upgrade dashtam",
            unknown.len()
        ),
    }
}

pub fn providers(config: &Config, secrets: &Secrets) -> anyhow::Result<Providers> {
    let p = &config.providers.plaid;
    let plaid = PlaidClient::new(PlaidConfig {
        base_url: p.base_url.clone(),
        client_id: p.client_id.clone(),
        secret: secrets.plaid.clone(),
        timeout: p.timeout_secs.get(),
    })
    .context("building the Plaid HTTP client")?;
    let s = &config.providers.schwab;
    let schwab = SchwabClient::new(SchwabConfig {
        base_url: s.base_url.clone(),
        app_key: s.app_key.clone(),
        secret: secrets.schwab.clone(),
        redirect_uri: s.redirect_uri.clone(),
        timeout: s.timeout_secs.get(),
        refresh_token_lifetime: s.refresh_token_lifetime_secs.get(),
    })
    .context("building the Schwab HTTP client")?;
    Ok(Providers {
        plaid_webhooks: Some(Arc::new(PlaidWebhooks::new(plaid.clone()))),
        plaid_webhook_url: config
            .plaid_webhooks_on()
            .then(|| p.webhook_url.clone())
            .flatten(),
        plaid: Some(Arc::new(plaid)),
        schwab: Some(Arc::new(schwab)),
    })
}

/// Applies pending migrations, on a direct connection (not through a
/// transaction pooler: sqlx holds a session lock while it migrates).
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    let Some(direct) = db.session() else {
        bail!(
            "migrations need a direct connection to PostgreSQL, not one through the pooler: \
             set database.direct_url (DASHTAM__DATABASE__DIRECT_URL)"
        );
    };
    dashtam_store::migrate::run(direct)
        .await
        .context("applying migrations")
}

/// Everything a running daemon needs, built once.
pub struct Daemon {
    pub config: Config,
    pub pool: Db,
    pub cipher: Arc<Cipher>,
    pub jwt_secret: Option<LiveSecret>,
    pub jwt_public_keys: Option<LiveSecret>,
    pub providers: Providers,
}

/// A started daemon: the API's address (if the api role runs) and its tasks.
pub struct Running {
    pub api_addr: Option<SocketAddr>,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Running {
    /// Waits for every role to stop; the first error wins.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        while let Some(r) = self.tasks.join_next().await {
            let r = r.map_err(anyhow::Error::from).and_then(|r| r);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl Daemon {
    pub fn new(config: Config, pool: Db, secrets: &Secrets) -> anyhow::Result<Self> {
        Ok(Self {
            providers: providers(&config, secrets)?,
            cipher: secrets.cipher.clone(),
            jwt_secret: secrets.jwt.clone(),
            jwt_public_keys: secrets.jwt_public_keys.clone(),
            pool,
            config,
        })
    }

    pub fn store(&self) -> Store {
        Store::new(self.pool.clone(), self.cipher.clone())
    }

    /// Starts `roles`; the api listens on `listener`. Everything stops when
    /// `shutdown` is cancelled.
    pub async fn start(
        &self,
        roles: &[Role],
        listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Running> {
        let mut tasks = JoinSet::new();
        let queue = Queue::new(self.pool.clone());
        // Every daemon listens: the api role serves the API; any other role
        // still serves /healthz, /readyz and /metrics for probes and scrapes.
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(self.config.http.listen)
                .await
                .with_context(|| format!("cannot listen on {}", self.config.http.listen))?,
        };
        let api_addr = Some(listener.local_addr()?);
        let app = if roles.contains(&Role::Api) {
            let auth = &self.config.auth;
            let allowed = auth.algorithms.iter().map(|a| a.0).collect();
            let state = AppState::new(dashtam_api::Services {
                store: self.store(),
                queue: queue.clone(),
                providers: self.providers.clone(),
                auth: Arc::new(Auth::new(
                    allowed,
                    self.jwt_secret.clone(),
                    self.jwt_public_keys.clone(),
                    &auth.issuer,
                    &auth.audience,
                )),
                jobs: JobSettings {
                    sync_max_attempts: self.config.jobs.sync_max_attempts,
                },
                body_limit: self.config.http.body_limit_bytes,
                job_events: Some(dashtam_queue::events::JobEvents::start(
                    self.pool.clone(),
                    shutdown.clone(),
                )),
                rate_limiter: self
                    .config
                    .rate_limit_settings()
                    .map(dashtam_api::ratelimit::RateLimiter::new)
                    .transpose()
                    .context("rate_limit.redis_url")?
                    .map(Arc::new),
                shutdown: shutdown.clone(),
                budgets: self.config.budget_book(),
                throughput: Default::default(),
                lease: self.config.tokens.lease_secs.get(),
                body_read_timeout: self.config.http.body_read_timeout_secs.get(),
                trusted_proxies: self.config.http.trusted_proxies.clone(),
            });
            info!(addr = %listener.local_addr()?, "api listening");
            dashtam_api::router(state)
        } else {
            info!(addr = %listener.local_addr()?, "health and metrics listening");
            dashtam_api::ops_router(self.pool.clone(), None)
        };
        let stop = shutdown.clone();
        let http = &self.config.http;
        let header_timeout = http.header_read_timeout_secs.get();
        let drain = http.shutdown_drain_secs.get();
        tasks.spawn(async move {
            dashtam_api::serve::serve(listener, app, header_timeout, drain, stop).await;
            Ok(())
        });
        let queue_pool = queue_pool(&self.config, &self.pool);
        let known = self.config.known_labels();
        dashtam_telemetry::metrics::METRICS.prime(&known);
        tasks.spawn(refresh_gauges(
            self.store(),
            queue_pool.clone(),
            known,
            self.config.metrics.refresh_secs.get(),
            shutdown.clone(),
        ));
        if roles.contains(&Role::Worker) {
            let name = process_name();
            let c = &self.config;
            let budgets = Arc::new(dashtam_worker::budget::Budgets::new(
                c.budget_settings(),
                queue_pool.clone(),
            ));
            let gate = Arc::new(dashtam_worker::gate::ProviderGate::new(
                self.store(),
                queue_pool.clone(),
                c.breaker.settings(),
                budgets,
            ));
            let tokens = TokenKeeper::new(
                self.store(),
                self.providers.clone(),
                gate.clone(),
                TokenSettings {
                    refresh_lead: c.tokens.refresh_lead_secs.get(),
                    expiry_margin: c.tokens.expiry_margin_secs.get(),
                    lease: c.tokens.lease_secs.get(),
                },
            );
            let sync = SyncHandler::new(
                self.store(),
                self.providers.clone(),
                tokens.clone(),
                gate,
                SyncSettings {
                    page_size: c.sync.page_size,
                    page_retries: c.sync.page_retries,
                    max_restarts: c.sync.max_restarts,
                    window_overlap: c.sync.window_overlap_hours.get(),
                    initial_history: c.sync.initial_history_days.get(),
                },
            );
            let pool = WorkerPool::new(queue_pool.clone(), c.worker_config(name))
                .on_abandoned(Arc::new(AuditAbandoned))
                .work::<SyncJob>(Arc::new(sync))
                .work::<TokenRefreshJob>(Arc::new(RefreshHandler::new(tokens)));
            let stop = shutdown.clone();
            tasks.spawn(async move { pool.run(stop).await.context("worker pool failed") });
        }
        if roles.contains(&Role::Scheduler) {
            // Orphan rescue runs in every worker pool too; running it here
            // as well lets a cluster of API and scheduler daemons recover.
            let pool = self.pool.clone();
            let w = &self.config.worker;
            let timeout = w.orphan_timeout_secs.get();
            let every = w.rescue_interval_secs.get();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let hook: Arc<dyn dashtam_queue::AbandonHook> = Arc::new(AuditAbandoned);
                dashtam_queue::maintain(pool, timeout, every, Some(hook), stop).await;
                Ok(())
            });
            let scheduler = dashtam_scheduler::Scheduler::new(
                self.store(),
                self.config.scheduler_settings(process_name()),
            );
            let stop = shutdown.clone();
            tasks.spawn(async move {
                scheduler.run(stop).await;
                Ok(())
            });
        }
        Ok(Running { api_addr, tasks })
    }
}

/// Every `every` until `stop`: reads the queue depth, the oldest waiting
/// job's age and connection counts from the database into the gauges, and
/// this process's pool sizes.
async fn refresh_gauges(
    store: Store,
    queue_pool: Db,
    known: dashtam_telemetry::metrics::KnownLabels,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let m = &dashtam_telemetry::metrics::METRICS;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        for (name, pool) in [("main", store.pool()), ("queue", &queue_pool)] {
            let idle = i64::try_from(pool.num_idle()).unwrap_or(0);
            let size = i64::from(pool.size());
            m.db_pool_connections
                .with_label_values(&[name, "idle"])
                .set(idle);
            m.db_pool_connections
                .with_label_values(&[name, "in_use"])
                .set(size - idle);
        }
        match dashtam_queue::ops::depth(store.pool()).await {
            Ok(depth) => {
                // Reset first: a state that emptied must read 0, not its
                // last value (and a queue no longer configured vanish).
                m.queue_jobs.reset();
                m.queue_oldest_available_age.reset();
                m.zero_queue_gauges(&known);
                for (queue, state, n) in depth.jobs {
                    m.queue_jobs.with_label_values(&[&queue, &state]).set(n);
                }
                for (queue, age) in depth.oldest_available {
                    m.queue_oldest_available_age
                        .with_label_values(&[&queue])
                        .set(age);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the queue depth"),
        }
        match store.provider_health().await {
            Ok(rows) => {
                // Every provider, open or not.
                for provider in dashtam_domain::model::ProviderKind::ALL {
                    let open = rows
                        .iter()
                        .any(|h| h.provider == provider.as_str() && h.breaker != "closed");
                    m.provider_breaker_open
                        .with_label_values(&[provider.as_str()])
                        .set(i64::from(open));
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read provider health"),
        }
        match store.connection_counts().await {
            Ok(counts) => {
                m.connections.reset();
                m.zero_connection_gauges(&known);
                for (provider, status, n) in counts {
                    m.connections
                        .with_label_values(&[&provider, &status])
                        .set(n);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not count connections"),
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => info!("SIGINT received; shutting down"),
            _ = term => info!("SIGTERM received; shutting down"),
        }
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
