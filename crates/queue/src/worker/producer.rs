//! Claims due jobs for a queue and keeps its slots busy.

use super::*;
use dashtam_db::Db;

type ClaimFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Vec<Claimed>, usize), sqlx::Error>> + Send>,
>;

/// Claims up to `n` due jobs of `queue` for `worker` (fairly between
/// owners, see `fair`) and books them in the ledger; returns them and `n`.
async fn claim_jobs(
    pool: Db,
    ring: Arc<tokio::sync::Mutex<OwnerRing>>,
    req: ClaimRequest,
    ledger: Ledger,
) -> Result<(Vec<Claimed>, usize), sqlx::Error> {
    let _booking = ledger.claiming().await;
    let mut ring = ring.lock().await;
    let started = std::time::Instant::now();
    let jobs: Vec<Claimed> = fair::claim(&pool, &mut ring, &req).await?;
    METRICS
        .queue_claim_seconds
        .with_label_values(&[&req.queue])
        .observe(started.elapsed().as_secs_f64());
    if jobs.len() < req.n {
        ring.stale();
    }
    ledger.claimed(jobs.iter().map(|j| (j.id, j.started_at)));
    Ok((jobs, req.n))
}

pub(super) struct Fetcher {
    pub(super) pool: Db,
    pub(super) worker_id: Uuid,
    pub(super) queue: QueueConfig,
    pub(super) handlers: Arc<HashMap<String, Arc<dyn Handler>>>,
    pub(super) waker: Arc<Notify>,
    pub(super) poll_interval: Duration,
    pub(super) backoff: Backoff,
    pub(super) done: mpsc::Sender<Completion>,
    pub(super) ledger: Ledger,
}

impl Fetcher {
    /// Claims and runs jobs until `stop`; then waits up to `grace` for
    /// running jobs and returns the ids of those it had to abandon.
    pub(super) async fn run(self, stop: CancellationToken, grace: Duration) -> Vec<Uuid> {
        let slots = Arc::new(Semaphore::new(self.queue.concurrency));
        let mut running: JoinSet<()> = JoinSet::new();
        let mut running_ids: HashMap<tokio::task::Id, Uuid> = HashMap::new();
        // Claimed jobs waiting for a free slot (at most `prefetch` beyond
        // the free slots at claim time).
        let mut buffer: VecDeque<Claimed> = VecDeque::new();
        // The claim in flight, if any: it runs while finished jobs free
        // slots and buffered jobs start, so a round trip never stalls them.
        let mut claim: Option<ClaimFuture> = None;
        // The last claim came back short: wait for a wake-up before the next.
        let mut dry = false;
        // The owners with due jobs, served in turn, and the claim floor,
        // read again in the background while this fetcher runs.
        let ring = OwnerRing::default();
        let floor_stop = stop.child_token();
        tokio::spawn(ring.floor.clone().keep_fresh(
            self.pool.clone(),
            self.queue.name.clone(),
            floor_stop.clone(),
        ));
        let ring = Arc::new(tokio::sync::Mutex::new(ring));
        let mut db_failures = 0u32;
        let poll = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(poll);
        loop {
            // Reap finished tasks so the id map stays small.
            while let Some(res) = running.try_join_next_with_id() {
                let id = match res {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                running_ids.remove(&id);
            }
            // Start what the free slots allow.
            while !buffer.is_empty() {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let Some(job) = buffer.pop_front() else { break };
                let job_id = job.id;
                let handle = running.spawn(self.run_job(job, permit));
                running_ids.insert(handle.id(), job_id);
            }
            // Claim when the buffer is down to half the prefetch: claims stay
            // large (one round trip for many jobs) without hoarding.
            if claim.is_none() && !dry && buffer.len() <= self.queue.prefetch / 2 {
                let room = (slots.available_permits() + self.queue.prefetch)
                    .saturating_sub(buffer.len())
                    .min(self.queue.fetch_batch);
                if room > 0 {
                    let req = ClaimRequest {
                        queue: self.queue.name.clone(),
                        n: room,
                        worker: self.worker_id,
                        max_running_per_owner: self.queue.max_running_per_owner,
                    };
                    claim = Some(Box::pin(claim_jobs(
                        self.pool.clone(),
                        ring.clone(),
                        req,
                        self.ledger.clone(),
                    )));
                }
            }
            tokio::select! {
                res = async { claim.as_mut().expect("guarded").await }, if claim.is_some() => {
                    claim = None;
                    match res {
                        Ok((jobs, asked)) => {
                            db_failures = 0;
                            if jobs.len() < asked {
                                debug!(queue = %self.queue.name, got = jobs.len(), asked, "claim came back short");
                                dry = true;
                                poll.as_mut().reset(tokio::time::Instant::now() + self.poll_interval);
                            }
                            buffer.extend(jobs);
                        }
                        Err(e) => {
                            db_failures += 1;
                            let pause = Duration::from_millis(100 * u64::from(db_failures.min(50)));
                            warn!(queue = %self.queue.name, error = %e, ?pause, "claiming jobs failed; retrying");
                            dry = true;
                            poll.as_mut().reset(tokio::time::Instant::now() + pause);
                        }
                    }
                }
                p = slots.clone().acquire_owned(), if !buffer.is_empty() || (claim.is_none() && !dry) => {
                    // A slot is free: loop round to fill it.
                    drop(p);
                }
                _ = self.waker.notified(), if dry && db_failures == 0 => dry = false,
                _ = &mut poll, if dry => dry = false,
                _ = stop.cancelled() => break,
            }
        }
        floor_stop.cancel();
        // A claim still in flight holds jobs too: take them to hand back.
        if let Some(c) = claim.take()
            && let Ok((jobs, _)) = c.await
        {
            buffer.extend(jobs);
        }
        let mut abandoned: Vec<Uuid> = buffer.iter().map(|j| j.id).collect();
        // Stop claiming; give running jobs their grace period.
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = running.join_next_with_id() => match next {
                    Some(Ok((id, ()))) => { running_ids.remove(&id); }
                    Some(Err(e)) => { running_ids.remove(&e.id()); }
                    None => break,
                },
                _ = &mut deadline => {
                    running.abort_all();
                    break;
                }
            }
        }
        abandoned.extend(running_ids.into_values());
        abandoned
    }
}
