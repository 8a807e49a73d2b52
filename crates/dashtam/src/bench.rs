//! Benchmarks that print one JSON line per run (see docs/benchmarks.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dashtam_domain::jobs::{KIND_SYNC, QUEUE_SYNC, SyncJob};
use dashtam_domain::model::ProviderKind;
use dashtam_domain::ports::ProviderCredentials;
use dashtam_domain::{ConnectionId, UserId};
use dashtam_queue::{NewJob, Queue};
use dashtam_sandbox::{ItemSpec, Sandbox, SandboxConfig};
use dashtam_store::Cipher;
use dashtam_store::connections::NewConnection;
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Daemon, Role};
use crate::config::{Config, QueueSection};

pub struct SyncBenchOptions {
    pub database_url: String,
    pub connections: u32,
    /// Per connection.
    pub transactions: u32,
    pub accounts: u32,
    pub concurrency: usize,
}

/// The brief's "sync" workload: M connections with K transactions each,
/// one sync per connection, then an immediate re-sync with nothing new.
pub async fn sync(mut config: Config, opts: SyncBenchOptions) -> anyhow::Result<()> {
    if opts.accounts == 0 || !opts.transactions.is_multiple_of(opts.accounts) {
        bail!("--transactions must be a multiple of --accounts");
    }
    dashtam_store::migrate::recreate_database(&opts.database_url)
        .await
        .with_context(|| format!("re-creating {}", app::redact(&opts.database_url)))?;
    let pool = app::connect(&config, &opts.database_url).await?;
    dashtam_store::migrate::run(&pool).await?;

    let shutdown = CancellationToken::new();
    let sandbox = Sandbox::new(SandboxConfig::default());
    let sandbox_config = sandbox.config();
    let stop = shutdown.clone();
    let addr = sandbox
        .clone()
        .spawn(
            "127.0.0.1:0".parse()?,
            async move { stop.cancelled().await },
        )
        .await?;
    config.providers.plaid.base_url = format!("http://{addr}");
    config.providers.plaid.client_id = sandbox_config.client_id.clone();
    config.providers.plaid.secret = sandbox_config.secret.clone().into();
    config.worker.poll_interval_ms = 50;
    config.worker.queues.insert(
        QUEUE_SYNC.into(),
        QueueSection {
            concurrency: opts.concurrency,
            fetch_batch: opts.concurrency,
        },
    );
    config.database.max_connections = config
        .database
        .max_connections
        .max(opts.concurrency as u32 + 8);

    let daemon = Daemon {
        providers: app::providers(&config)?,
        cipher: Arc::new(Cipher::ephemeral()?),
        jwt_secret: None,
        pool: pool.clone(),
        config,
    };
    let store = daemon.store();
    let user = UserId::parse("bench").map_err(anyhow::Error::msg)?;
    let mut connections = Vec::new();
    for _ in 0..opts.connections {
        let token = sandbox.create_item(ItemSpec {
            accounts: Some(opts.accounts),
            transactions_per_account: Some(opts.transactions / opts.accounts),
        });
        let conn = store
            .create_connection(NewConnection {
                user: &user,
                provider: ProviderKind::Plaid,
                credentials: &ProviderCredentials {
                    access_token: SecretString::from(token),
                    refresh_token: None,
                },
                access_token_expires_at: None,
                refresh_token_expires_at: None,
                correlation_id: None,
            })
            .await?;
        connections.push(ConnectionId(conn.id));
    }
    let running = daemon
        .start(&[Role::Worker], None, shutdown.clone())
        .await?;
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
    shutdown.cancel();
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

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Enqueues one sync per connection and waits until none is unfinished.
async fn round(queue: &Queue, connections: &[ConnectionId]) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let jobs: Vec<NewJob> = connections
        .iter()
        .map(|c| {
            let mut j = NewJob::new(
                QUEUE_SYNC,
                KIND_SYNC,
                serde_json::to_value(SyncJob::new(*c))?,
            );
            j.max_attempts = 3;
            Ok(j)
        })
        .collect::<Result<_, serde_json::Error>>()?;
    queue.enqueue_many(&jobs).await?;
    loop {
        let counts = queue.state_counts(Some(KIND_SYNC)).await?;
        let unfinished: i64 = counts
            .iter()
            .filter(|(s, _)| !matches!(s.as_str(), "succeeded" | "failed" | "cancelled"))
            .map(|(_, n)| n)
            .sum();
        if unfinished == 0 {
            let failed: i64 = counts
                .iter()
                .filter(|(s, _)| s == "failed")
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
