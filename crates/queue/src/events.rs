//! Live job events for API streams: one LISTEN per process on
//! `dashtam_job_events`, fanned out to every stream of that process. Updates
//! notify only for jobs someone watches (table `job_watchers`), so the queue's
//! hot path pays nothing for this when no one is watching.

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use sqlx::PgPool;

use crate::QueueError;

pub const CHANNEL: &str = "dashtam_job_events";

/// What streams hear: a job that changed, or `None` when notifications may
/// have been missed (every stream should look again).
pub type Event = Option<Uuid>;

#[derive(Clone)]
pub struct JobEvents {
    pool: PgPool,
    tx: broadcast::Sender<Event>,
}

impl JobEvents {
    /// Starts this process's listener (it runs until `stop`).
    pub fn start(pool: PgPool, stop: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let sender = tx.clone();
        tokio::spawn(crate::listen_channel(
            pool.clone(),
            CHANNEL,
            move |payload| {
                let _ = sender.send(match payload {
                    Some(p) => match p.parse() {
                        Ok(id) => Some(id),
                        Err(_) => return,
                    },
                    None => None,
                });
            },
            stop,
        ));
        Self { pool, tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Asks for notifications about `job` until the returned guard drops.
    pub async fn watch(&self, job: Uuid) -> Result<Watch, QueueError> {
        let watcher = Uuid::now_v7();
        sqlx::query(include_str!("../queries/watch.sql"))
            .bind(job)
            .bind(watcher)
            .execute(&self.pool)
            .await?;
        Ok(Watch {
            pool: self.pool.clone(),
            job,
            watcher,
        })
    }
}

/// A registered watcher; removed when dropped (a crashed process's rows
/// expire and the prune cycle deletes them).
pub struct Watch {
    pool: PgPool,
    job: Uuid,
    watcher: Uuid,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let (pool, job, watcher) = (self.pool.clone(), self.job, self.watcher);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = sqlx::query(include_str!("../queries/unwatch.sql"))
                    .bind(job)
                    .bind(watcher)
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(error = %e, "could not remove a job watcher (it expires)");
                }
            });
        }
    }
}
