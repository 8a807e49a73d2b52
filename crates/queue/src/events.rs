//! Live job events for API streams: one LISTEN per process on
//! `dashtam_job_events`, fanned out to every stream of that process. Only
//! jobs someone watches (`jobs.watched`, set by [`JobEvents::watch`]) notify
//! on update, so the queue's hot path pays nothing when no one watches.

use dashtam_db::Db;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::QueueError;

pub const CHANNEL: &str = "dashtam_job_events";

/// What streams hear: a job that changed, or `None` when notifications may
/// have been missed (every stream should look again).
pub type Event = Option<Uuid>;

#[derive(Clone)]
pub struct JobEvents {
    pool: Db,
    tx: broadcast::Sender<Event>,
}

impl JobEvents {
    /// Starts this process's listener (it runs until `stop`).
    pub fn start(pool: impl Into<Db>, stop: CancellationToken) -> Self {
        let pool = pool.into();
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

    /// Asks for notifications about every later change of `job` (for the
    /// rest of its life: a job is short-lived, and a flag is cheaper than
    /// tracking who still listens).
    pub async fn watch(&self, job: Uuid) -> Result<(), QueueError> {
        sqlx::query_file!("queries/watch.sql", job)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
