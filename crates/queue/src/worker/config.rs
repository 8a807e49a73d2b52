//! Per-queue and per-pool settings.

use super::*;

/// Per-queue settings.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    pub name: String,
    /// Jobs of this queue running at once in this process.
    pub concurrency: usize,
    /// Most jobs claimed in one round trip.
    pub fetch_batch: usize,
    /// Jobs claimed beyond the free slots, to start the moment a slot frees
    /// (for many short jobs). 0 for long jobs, so an idle peer process gets
    /// them instead.
    pub prefetch: usize,
    /// Most jobs of one owner running at once in this queue, across every
    /// process (0: no cap). With a cap, a claim takes an owner's jobs only
    /// through its fair share, never through the fill.
    pub max_running_per_owner: usize,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Shown in `queue_workers.name` (host and pid, say); the id is unique
    /// per process regardless.
    pub name: String,
    pub queues: Vec<QueueConfig>,
    /// Fallback poll when no notification arrives (also picks up retries
    /// and scheduled jobs falling due).
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is presumed dead and its jobs rescued.
    pub orphan_timeout: Duration,
    /// How often this process looks for orphans.
    pub rescue_interval: Duration,
    pub backoff: Backoff,
    /// Most outcomes written in one statement.
    pub completion_batch: usize,
    /// On shutdown, how long running jobs may take to finish before they are
    /// handed back.
    pub shutdown_timeout: Duration,
}

/// How long finished jobs are kept before the scheduler's prune cycle
/// deletes them ([`crate::ops::prune`]).
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub succeeded: Duration,
    /// Failed (dead) and cancelled jobs.
    pub failed: Duration,
    /// Rows deleted per statement.
    pub batch: i64,
}
