//! Hands back the jobs of dead workers, and wakes their queues.

use super::*;
use dashtam_db::Db;

/// Every `every` until `stop`: hands back the jobs of dead workers. Every
/// worker pool runs this, and so does the scheduler role. (Pruning is the
/// scheduler's prune cycle: once per tick for the cluster.)
pub async fn maintain(
    pool: Db,
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
    pool: &Db,
    timeout: Duration,
    hook: Option<&Arc<dyn AbandonHook>>,
) -> Result<usize, QueueError> {
    let secs = timeout.as_secs_f64();
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_file!("queries/rescue_orphans.sql", secs)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.id, r.queue, r.kind, r.attempt))
        .collect();
    let rescued = given_back(
        &mut tx,
        rows,
        "the worker running this job stopped heartbeating",
        "rescued",
        hook,
    )
    .await?;
    sqlx::query_file!("queries/prune_workers.sql", secs * 10.0)
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
        sqlx::query_file!("queries/notify.sql", NOTIFY_CHANNEL, q)
            .fetch_one(&mut *conn)
            .await?;
    }
    Ok(())
}
