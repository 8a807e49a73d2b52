//! `bench soak`: the queue under hours-like churn. Sync jobs are enqueued
//! at a fixed rate for M minutes while workers run them against a slow
//! sandbox; each minute prints jobs/s, the claim statement's p50/p99, and
//! the jobs table's dead tuples, size and autovacuum runs. With
//! `--pin-xmin` another connection holds a transaction (and so the xmin
//! horizon) open for the whole run: vacuum can then remove nothing, the
//! failure mode that slows SKIP LOCKED queues down in production.
//!
//! By default it runs on a private PostgreSQL with the server's default
//! settings (autovacuum on), started in a temporary directory: a shared
//! server tuned for tests (autovacuum off) would make any queue decay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dashtam_domain::UserId;
use dashtam_queue::Queue;
use dashtam_sandbox::{Faults, ItemSpec};
use dashtam_telemetry::metrics::METRICS;
use serde_json::json;
use sqlx::Connection as _;

use crate::localpg::LocalPostgres;
use dashtam::config::Config;

pub struct SoakOptions {
    /// `None`: a private server with default settings.
    pub database_url: Option<String>,
    pub minutes: u32,
    /// Sync jobs enqueued per second.
    pub rate: u32,
    pub connections: u32,
    /// Added to every provider data call.
    pub provider_latency_ms: u64,
    pub concurrency: usize,
    /// Hold a transaction open on another connection for the whole run.
    pub pin_xmin: bool,
}

/// The hot jobs table as `pg_stat_user_tables` and the catalog see it, and
/// the size of the finished jobs' history (jobs_done's partitions).
#[derive(Debug, Clone, Copy, Default)]
struct TableStats {
    dead: i64,
    live: i64,
    bytes: i64,
    autovacuums: i64,
    history_rows: i64,
    history_bytes: i64,
}

async fn table_stats(pool: &dashtam_db::Db) -> anyhow::Result<TableStats> {
    let (dead, live, bytes, autovacuums): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT n_dead_tup, n_live_tup, pg_total_relation_size(relid), autovacuum_count
         FROM pg_stat_user_tables WHERE relname = 'jobs'",
    )
    .fetch_one(pool)
    .await?;
    let (history_rows, history_bytes): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(s.n_live_tup), 0)::int8,
                coalesce(sum(pg_total_relation_size(t.relid)), 0)::int8
         FROM pg_partition_tree('jobs_done') t
         JOIN pg_stat_user_tables s ON s.relid = t.relid
         WHERE t.isleaf",
    )
    .fetch_one(pool)
    .await?;
    Ok(TableStats {
        dead,
        live,
        bytes,
        autovacuums,
        history_rows,
        history_bytes,
    })
}

/// Cumulative claim-duration buckets of the sync queue, from this
/// process's metrics.
fn claim_buckets() -> Vec<(f64, u64)> {
    dashtam_telemetry::metrics::cumulative_buckets(&METRICS.queue_claim_seconds, &["sync"])
}

/// Sync jobs that succeeded so far, in this process.
fn succeeded() -> u64 {
    METRICS
        .jobs
        .with_label_values(&["sync", "sync", "succeeded"])
        .get()
}

pub async fn soak(config: Config, opts: SoakOptions) -> anyhow::Result<()> {
    if opts.rate == 0 || opts.minutes == 0 || opts.connections == 0 {
        bail!("--rate, --minutes and --connections must be above 0");
    }
    let local = match &opts.database_url {
        Some(_) => None,
        None => Some(LocalPostgres::start(true).context("starting a private PostgreSQL")?),
    };
    let url = match (&opts.database_url, &local) {
        (Some(u), _) => u.clone(),
        (None, Some(pg)) => pg.url("dashtam_soak"),
        (None, None) => unreachable!("one of the two is set"),
    };
    let rig = super::SyncRig::new(
        config,
        &url,
        opts.concurrency,
        0,
        Faults {
            latency_ms: opts.provider_latency_ms,
            ..Faults::default()
        },
    )
    .await?;
    let pool = rig.pool.clone();
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&pool)
        .await?;
    if autovacuum != "on" {
        eprintln!("warning: autovacuum is off on this server: the table can only grow");
    }

    let shutdown = rig.shutdown.clone();
    let user = UserId::parse("soak").map_err(anyhow::Error::msg)?;
    let connections = rig
        .link(
            &user,
            opts.connections as usize,
            ItemSpec {
                accounts: Some(1),
                transactions_per_account: Some(5),
            },
        )
        .await?;
    // The pinned horizon: an idle transaction that has taken an xid.
    let mut pin = if opts.pin_xmin {
        let mut conn = sqlx::PgConnection::connect_with(&url.parse()?).await?;
        sqlx::query("BEGIN").execute(&mut conn).await?;
        sqlx::query("SELECT txid_current()")
            .execute(&mut conn)
            .await?;
        Some(conn)
    } else {
        None
    };
    let running = rig.start_worker().await?;

    // The enqueuer: every 100 ms, a tenth of a second's jobs.
    let queue = Queue::new(pool.clone());
    let enqueued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let queue = queue.clone();
        let enqueued = enqueued.clone();
        let stop = shutdown.clone();
        let per_tick = (f64::from(opts.rate) / 10.0).max(1.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut owed = 0.0;
            let mut next = 0usize;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return Ok::<(), anyhow::Error>(()),
                }
                owed += per_tick;
                let n = owed.floor() as usize;
                owed -= n as f64;
                let jobs =
                    super::sync_jobs((0..n).map(|i| &connections[(next + i) % connections.len()]))?;
                next += n;
                let made = queue.enqueue_many(&jobs).await?;
                enqueued.fetch_add(made, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };

    let mut minutes = Vec::new();
    let mut claims = claim_buckets();
    let mut done = succeeded();
    let mut at = Instant::now();
    for minute in 1..=opts.minutes {
        // Ctrl-C ends the run early, still stopping the private server.
        tokio::select! {
            _ = tokio::time::sleep_until((at + Duration::from_secs(60)).into()) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let now = Instant::now();
        let (claims_now, done_now) = (claim_buckets(), succeeded());
        let stats = table_stats(&pool).await?;
        let secs = now.duration_since(at).as_secs_f64();
        let line = json!({
            "bench": "soak",
            "minute": minute,
            "pinned_xmin": opts.pin_xmin,
            "jobs_per_s": ((done_now - done) as f64 / secs).round(),
            "enqueued_total": enqueued.load(std::sync::atomic::Ordering::Relaxed),
            "claim_p50_ms": super::quantile(&claims, &claims_now, 0.5).map(|s| super::round3(s * 1000.0)),
            "claim_p99_ms": super::quantile(&claims, &claims_now, 0.99).map(|s| super::round3(s * 1000.0)),
            "jobs_live_tuples": stats.live,
            "jobs_dead_tuples": stats.dead,
            "jobs_table_mb": super::round3(stats.bytes as f64 / 1_048_576.0),
            "autovacuum_runs": stats.autovacuums,
            "history_rows": stats.history_rows,
            "history_mb": super::round3(stats.history_bytes as f64 / 1_048_576.0),
        });
        println!("{line}");
        minutes.push(line);
        (claims, done, at) = (claims_now, done_now, now);
    }
    shutdown.cancel();
    producer.await??;
    running.wait().await?;
    if let Some(conn) = pin.as_mut() {
        sqlx::query("ROLLBACK").execute(conn).await?;
    }
    let (Some(first), Some(last)) = (minutes.first(), minutes.last()) else {
        bail!("interrupted before the first minute ended");
    };
    let ratio = |key: &str| {
        let (a, b) = (first[key].as_f64(), last[key].as_f64());
        match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => Some(super::round3(b / a)),
            _ => None,
        }
    };
    println!(
        "{}",
        json!({
            "bench": "soak",
            "summary": true,
            "minutes": opts.minutes,
            "rate": opts.rate,
            "connections": opts.connections,
            "provider_latency_ms": opts.provider_latency_ms,
            "concurrency": opts.concurrency,
            "pinned_xmin": opts.pin_xmin,
            "private_server": local.is_some(),
            "autovacuum": autovacuum,
            "last_over_first_jobs_per_s": ratio("jobs_per_s"),
            "last_over_first_claim_p99": ratio("claim_p99_ms"),
        })
    );
    drop(local);
    Ok(())
}
