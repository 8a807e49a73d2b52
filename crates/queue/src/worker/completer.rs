//! Writes outcomes in batches, fenced by each claim's lease token.

use super::*;
use dashtam_db::Db;

#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Succeeded,
    Failed {
        state: JobState,
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

/// Writes outcomes in batches; retries on database errors so no outcome is
/// lost while the database is briefly away. Written outcomes go to the
/// ledger, which writes them again should a crash undo them.
pub(super) async fn complete(
    pool: Db,
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
    pool: &Db,
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
                f_states.push(state.as_str());
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
        sqlx::query_file!(
            "queries/complete_snoozed.sql",
            &z_ids,
            &z_delays,
            &z_waiting,
            worker_id,
            &z_starts
        )
        .execute(pool)
        .await?;
    }
    if !s_ids.is_empty() {
        sqlx::query_file!(
            "queries/complete_succeeded.sql",
            &s_ids,
            worker_id,
            &s_starts
        )
        .execute(pool)
        .await?;
    }
    if !f_ids.is_empty() {
        sqlx::query_file!(
            "queries/complete_failed.sql",
            &f_ids,
            &f_states as _,
            &f_delays,
            &f_msgs as _,
            worker_id,
            &f_starts
        )
        .execute(pool)
        .await?;
    }
    Ok(())
}
