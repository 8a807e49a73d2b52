//! What handlers implement and receive.

use super::*;
use dashtam_db::Db;

/// What a handler reports when a job did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again later: after `after` if given (a provider's `Retry-After`),
    /// else after the configured backoff.
    #[error("{message}")]
    Retry {
        message: String,
        after: Option<Duration>,
    },
    /// Retrying cannot help: the job dies now.
    #[error("{message}")]
    Permanent { message: String },
    /// The job saw a cancellation request and stopped.
    #[error("cancelled")]
    Cancelled,
    /// Not now, and not the job's fault: something it depends on (a
    /// provider whose breaker is open, or that asked everyone to wait) is
    /// unavailable until `after` from now. The job waits that long without
    /// spending an attempt or recording an error; `reason` (a stable word,
    /// e.g. `provider_unavailable`) is shown with the time in its `waiting`.
    #[error("waiting: {reason}")]
    Snooze { after: Duration, reason: String },
}

impl JobError {
    pub fn retry(message: impl Into<String>) -> Self {
        Self::Retry {
            message: message.into(),
            after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
        }
    }
}

/// What a handler is given: the claimed job and a way to report progress.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    /// 1 on the first run.
    pub attempt: i32,
    pub max_attempts: i32,
    pub owner: Option<String>,
    pub throttle_key: Option<String>,
    pub(super) worker_id: Uuid,
    /// The claim's lease token: the job row's `started_at` as this claim
    /// set it. Every write about the job is fenced by it.
    pub(super) started_at: chrono::DateTime<chrono::Utc>,
    pub(super) pool: Db,
}

impl JobContext {
    /// Whether a job of this kind about `subject`, enqueued before this
    /// one, is running now. Work that must not overlap for one subject
    /// waits while this holds: the oldest always goes first, so two such
    /// jobs never both wait on each other.
    pub async fn older_running(&self, subject: &str) -> Result<bool, QueueError> {
        Ok(
            sqlx::query_file_scalar!("queries/older_running.sql", subject, self.kind, self.id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Records progress visible through the job's status. Returns whether
    /// cancellation was requested: the handler should then stop, discard
    /// what it has not committed and return [`JobError::Cancelled`].
    pub async fn set_progress(&self, progress: &serde_json::Value) -> Result<bool, QueueError> {
        let cancel = sqlx::query_file_scalar!(
            "queries/set_progress.sql",
            self.id,
            progress,
            self.worker_id,
            self.started_at
        )
        .fetch_optional(&self.pool)
        .await?;
        // No row: the job is no longer ours (rescued while we stalled, or
        // the claim was lost with a database crash); stop.
        Ok(cancel.unwrap_or(true))
    }

    /// Marks the job succeeded on `conn`, the handler's own transaction,
    /// so its work and its success commit (or roll back) together. `false`:
    /// this claim is no longer ours (rescued, or undone by a database
    /// crash); the caller must roll its work back, another run owns the
    /// job now.
    pub async fn complete_in(
        &self,
        conn: &mut sqlx::PgConnection,
        progress: Option<&serde_json::Value>,
    ) -> Result<bool, sqlx::Error> {
        let row = sqlx::query_file_scalar!(
            "queries/complete_fenced.sql",
            self.id,
            self.worker_id,
            self.started_at,
            progress
        )
        .fetch_optional(conn)
        .await?;
        Ok(row.is_some())
    }
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, job: &JobContext) -> Result<(), JobError>;
}

/// The handler of one job type ([`JobArgs`]): it receives the arguments
/// parsed. Register it with [`WorkerPool::work`].
#[async_trait]
pub trait ArgsHandler<A>: Send + Sync + 'static {
    async fn handle(&self, args: A, job: &JobContext) -> Result<(), JobError>;
}

/// An [`ArgsHandler`] as a [`Handler`]: parses the payload (a payload that
/// does not parse fails the job for good) and records the job's subject on
/// its span.
pub(super) struct Typed<A> {
    pub(super) handler: Arc<dyn ArgsHandler<A>>,
}

#[async_trait]
impl<A> Handler for Typed<A>
where
    A: JobArgs + DeserializeOwned + Send + 'static,
{
    async fn handle(&self, job: &JobContext) -> Result<(), JobError> {
        let args: A = serde_json::from_value(job.payload.clone()).map_err(|e| {
            JobError::permanent(format!(
                "{} job payload does not parse: {e}",
                A::KIND.as_str()
            ))
        })?;
        if let Some(subject) = args.subject() {
            tracing::Span::current().record("subject", subject.as_str());
        }
        self.handler.handle(args, job).await
    }
}
