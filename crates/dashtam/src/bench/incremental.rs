//! `bench incremental`: the steady state of a large fleet. N connections,
//! every one synced once already; the sandbox then adds 0 to `max_new`
//! transactions to each; one sync of every connection runs through the
//! real worker, Plaid adapter and store, and is timed: syncs per second and
//! the p50/p99 of one sync's duration.

use std::time::{Duration, Instant};

use anyhow::bail;
use dashtam_domain::model::ProviderKind;
use dashtam_domain::ports::ProviderCredentials;
use dashtam_domain::{ConnectionId, UserId};
use dashtam_queue::Queue;
use dashtam_sandbox::{Advance, ItemSpec};
use dashtam_telemetry::metrics::{METRICS, cumulative_buckets};
use serde_json::json;

use dashtam::config::Config;

pub struct IncrementalOptions {
    pub database_url: String,
    pub connections: usize,
    /// Sync jobs running at once.
    pub concurrency: usize,
    /// Each connection gets 0 to this many new transactions.
    pub max_new: u32,
}

fn finished() -> u64 {
    ["succeeded", "failed"]
        .iter()
        .map(|e| METRICS.jobs.with_label_values(&["sync", "sync", e]).get())
        .sum()
}

fn failed() -> u64 {
    METRICS
        .jobs
        .with_label_values(&["sync", "sync", "failed"])
        .get()
}

/// One sync job per connection, enqueued at once; waits (on this process's
/// job counters, so the wait costs the database nothing) until every one
/// finished. Returns how long that took.
async fn sync_all(queue: &Queue, connections: &[ConnectionId]) -> anyhow::Result<Duration> {
    let jobs = super::sync_jobs(connections)?;
    let target = finished() + connections.len() as u64;
    let failed_before = failed();
    let t0 = Instant::now();
    for chunk in jobs.chunks(20_000) {
        queue.enqueue_many(chunk).await?;
    }
    let deadline = t0 + Duration::from_secs(1800);
    while finished() < target {
        if Instant::now() > deadline {
            bail!("the syncs did not finish within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = t0.elapsed();
    if failed() > failed_before {
        bail!("{} sync job(s) failed", failed() - failed_before);
    }
    Ok(elapsed)
}

pub async fn incremental(config: Config, opts: IncrementalOptions) -> anyhow::Result<()> {
    let rig = super::SyncRig::new(
        config,
        &opts.database_url,
        opts.concurrency,
        opts.concurrency,
        dashtam_sandbox::Faults::default(),
    )
    .await?;
    let (pool, sandbox) = (rig.pool.clone(), &rig.sandbox);
    let store = rig.daemon.store();
    let user = UserId::parse("bench").map_err(anyhow::Error::msg)?;

    // The connections, imported in bulk (one statement per 20,000).
    let tokens: Vec<String> = (0..opts.connections)
        .map(|_| {
            sandbox.create_item(ItemSpec {
                accounts: Some(1),
                transactions_per_account: Some(5),
            })
        })
        .collect();
    let mut connections = Vec::with_capacity(opts.connections);
    for chunk in tokens.chunks(20_000) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|t| dashtam_store::connections::Imported {
                credentials: ProviderCredentials {
                    access_token: t.clone().into(),
                    refresh_token: None,
                },
                access_token_expires_at: None,
                refresh_token_expires_at: None,
            })
            .collect();
        connections.extend(
            store
                .import_connections(&user, ProviderKind::Plaid, &rows)
                .await?,
        );
    }
    let running = rig.start_worker().await?;
    let queue = Queue::new(pool.clone());
    let first = sync_all(&queue, &connections).await?;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&pool)
        .await?;

    // New data at the provider: 0 to max_new transactions per connection.
    let mut added = 0u64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for t in &tokens {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = u32::try_from(seed % (u64::from(opts.max_new) + 1))?;
        let done = sandbox.advance(
            t,
            Advance {
                add: n,
                ..Advance::default()
            },
        );
        added += u64::from(done.map_or(0, |d| d.added));
    }

    let labels = ["sync", "sync", "succeeded"];
    let durations = cumulative_buckets(&METRICS.job_duration_seconds, &labels);
    let elapsed = sync_all(&queue, &connections).await?;
    let durations_after = cumulative_buckets(&METRICS.job_duration_seconds, &labels);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&pool)
        .await?;
    rig.shutdown.cancel();
    running.wait().await?;
    if after - before != i64::try_from(added)? {
        bail!(
            "expected {added} new transactions stored, found {}",
            after - before
        );
    }
    let ms =
        |q| super::quantile(&durations, &durations_after, q).map(|s| super::round3(s * 1000.0));
    println!(
        "{}",
        json!({
            "bench": "incremental",
            "connections": opts.connections,
            "concurrency": opts.concurrency,
            "new_transactions": added,
            "first_sync_s": super::round3(first.as_secs_f64()),
            "sync_s": super::round3(elapsed.as_secs_f64()),
            "syncs_per_s": (opts.connections as f64 / elapsed.as_secs_f64()).round(),
            "sync_p50_ms": ms(0.5),
            "sync_p99_ms": ms(0.99),
        })
    );
    Ok(())
}
