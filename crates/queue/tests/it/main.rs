//! Queue semantics against the real Postgres, one fresh database per test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use dashtam_queue::{
    Backoff, Enqueued, Handler, JobContext, JobError, JobState, NewJob, Queue, QueueConfig,
    WorkerConfig, WorkerPool,
};
use dashtam_testkit::{PrivatePg, wait_for};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

type Script = dyn Fn(&JobContext, usize) -> Result<(), JobError> + Send + Sync;

/// Runs `script(job, call_number)` and records when each call happened.
struct Scripted {
    calls: Mutex<Vec<(Instant, Uuid, serde_json::Value)>>,
    delay: Duration,
    script: Box<Script>,
}

impl Scripted {
    fn new(
        delay: Duration,
        script: impl Fn(&JobContext, usize) -> Result<(), JobError> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            delay,
            script: Box::new(script),
        })
    }

    fn calls(&self) -> Vec<(Instant, Uuid, serde_json::Value)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Handler for Scripted {
    async fn handle(&self, job: &JobContext) -> Result<(), JobError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((Instant::now(), job.id, job.payload.clone()));
            calls.len()
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        (self.script)(job, n)
    }
}

fn config(queues: &[(&str, usize)]) -> WorkerConfig {
    WorkerConfig {
        name: "test".into(),
        queues: queues
            .iter()
            .map(|(name, c)| QueueConfig {
                name: (*name).into(),
                concurrency: *c,
                fetch_batch: *c,
                prefetch: 0,
                max_running_per_owner: 0,
            })
            .collect(),
        poll_interval: Duration::from_millis(50),
        heartbeat_interval: Duration::from_millis(200),
        orphan_timeout: Duration::from_secs(1),
        rescue_interval: Duration::from_millis(200),
        backoff: Backoff {
            base: Duration::from_millis(150),
            max: Duration::from_millis(300),
        },
        completion_batch: 64,
        shutdown_timeout: Duration::from_secs(5),
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), dashtam_queue::QueueError>>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn start(pool: &PgPool, config: WorkerConfig, kind: &str, handler: Arc<dyn Handler>) -> Running {
    let stop = CancellationToken::new();
    let worker = WorkerPool::new(pool.clone(), config).handle(kind, handler);
    let s = stop.clone();
    Running {
        stop,
        task: tokio::spawn(async move { worker.run(s).await }),
    }
}

async fn wait_state(queue: &Queue, id: Uuid, state: JobState) -> dashtam_queue::JobRecord {
    wait_for(
        &format!("job {id} to be {state}"),
        Duration::from_secs(30),
        || async {
            let job = queue.get(id).await.unwrap().unwrap();
            if job.state == state {
                Ok(job)
            } else {
                Err(job)
            }
        },
    )
    .await
}

/// Waits until `handler` has been called `n` times.
async fn wait_calls(handler: &Scripted, n: usize) {
    wait_for(
        &format!("{n} handler calls"),
        Duration::from_secs(30),
        || async {
            let got = handler.calls().len();
            if got >= n { Ok(()) } else { Err(got) }
        },
    )
    .await
}

async fn enqueue(queue: &Queue, job: NewJob) -> Uuid {
    match queue.enqueue(job).await.unwrap() {
        Enqueued::Created(j) => j.id,
        Enqueued::Existing(j) => panic!("unexpected existing job {j:?}"),
    }
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn retries_are_scheduled_in_the_database_with_backoff(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let h = Scripted::new(Duration::ZERO, |_, n| {
        if n < 3 {
            Err(JobError::retry(format!("flaky {n}")))
        } else {
            Ok(())
        }
    });
    let w = start(&pool, config(&[("q", 2)]), "k", h.clone());
    let id = enqueue(&queue, NewJob::new("q", "k", json!({}))).await;
    let job = wait_state(&queue, id, JobState::Succeeded).await;
    w.stop().await;
    assert_eq!(job.attempt, 3);
    let errors = job.errors.as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["error"], "flaky 1");
    assert_eq!(errors[0]["attempt"], 1);
    assert!(errors[1]["at"].is_string());
    // No retry ran before the backoff floor.
    let calls = h.calls();
    for pair in calls.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_millis(150),
            "retried too soon"
        );
    }
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_retry_after_hint_is_honoured(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let h = Scripted::new(Duration::ZERO, |_, n| {
        if n == 1 {
            Err(JobError::Retry {
                message: "429".into(),
                after: Some(Duration::from_millis(700)),
            })
        } else {
            Ok(())
        }
    });
    let w = start(&pool, config(&[("q", 1)]), "k", h.clone());
    let id = enqueue(&queue, NewJob::new("q", "k", json!({}))).await;
    let retrying = wait_state(&queue, id, JobState::Retryable).await;
    // Scheduled 700 ms after the failure was recorded.
    let failed_at: chrono::DateTime<Utc> =
        serde_json::from_value(retrying.errors[0]["at"].clone()).unwrap();
    assert!(
        retrying.run_at - failed_at >= chrono::Duration::milliseconds(690),
        "{retrying:?}"
    );
    wait_state(&queue, id, JobState::Succeeded).await;
    w.stop().await;
    let calls = h.calls();
    assert!(calls[1].0 - calls[0].0 >= Duration::from_millis(700));
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn permanent_errors_and_the_last_attempt_kill_the_job(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let h = Scripted::new(Duration::ZERO, |job, _| {
        if job.payload["permanent"] == true {
            Err(JobError::permanent("bad input"))
        } else {
            Err(JobError::retry("still down"))
        }
    });
    let w = start(&pool, config(&[("q", 2)]), "k", h.clone());
    let permanent = enqueue(&queue, NewJob::new("q", "k", json!({"permanent": true}))).await;
    let mut limited = NewJob::new("q", "k", json!({"permanent": false}));
    limited.max_attempts = 2;
    let limited = enqueue(&queue, limited).await;
    let p = wait_state(&queue, permanent, JobState::Failed).await;
    let l = wait_state(&queue, limited, JobState::Failed).await;
    w.stop().await;
    assert_eq!(p.attempt, 1);
    assert_eq!(p.errors[0]["error"], "bad input");
    assert!(p.finished_at.is_some());
    assert_eq!(l.attempt, 2);
    assert_eq!(l.errors.as_array().unwrap().len(), 2);
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn scheduled_jobs_wait_for_their_time(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let h = Scripted::new(Duration::ZERO, |_, _| Ok(()));
    let w = start(&pool, config(&[("q", 1)]), "k", h.clone());
    let mut job = NewJob::new("q", "k", json!({}));
    let due = Utc::now() + chrono::Duration::milliseconds(800);
    job.run_at = Some(due);
    let id = enqueue(&queue, job).await;
    assert_eq!(
        queue.get(id).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    let done = wait_state(&queue, id, JobState::Succeeded).await;
    w.stop().await;
    assert!(done.started_at.unwrap() >= due);
}

/// Claims look for jobs from a floor (the oldest pending run_at, read every
/// few seconds) up. A job that turns up below it, as one committed by a
/// transaction that began long before would, is still claimed: the floor
/// is read again and goes down to it.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_job_below_the_claim_floor_is_still_claimed(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let h = Scripted::new(Duration::ZERO, |_, _| Ok(()));
    let w = start(&pool, config(&[("q", 1), ("other", 1)]), "k", h.clone());
    // The worker has claimed, so it holds a floor of about now - 30 s.
    let first = enqueue(&queue, NewJob::new("q", "k", json!({}))).await;
    wait_state(&queue, first, JobState::Succeeded).await;
    // A job an hour old, and one for a priority the queue has not had.
    let old: Uuid = sqlx::query_scalar(
        "INSERT INTO jobs (id, queue, kind, payload, state, max_attempts, run_at, created_at)
         VALUES (gen_random_uuid(), 'q', 'k', '{}', 'available', 1,
                 now() - interval '1 hour', now() - interval '1 hour')
         RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut urgent = NewJob::new("q", "k", json!({}));
    urgent.priority = -5;
    let urgent = enqueue(&queue, urgent).await;
    wait_state(&queue, urgent, JobState::Succeeded).await;
    let done = wait_state(&queue, old, JobState::Succeeded).await;
    w.stop().await;
    assert_eq!(done.attempt, 1);
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn lower_priority_numbers_run_first(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    for (p, label) in [(5, "low"), (0, "high"), (2, "mid")] {
        let mut j = NewJob::new("q", "k", json!({ "label": label }));
        j.priority = p;
        enqueue(&queue, j).await;
    }
    let h = Scripted::new(Duration::ZERO, |_, _| Ok(()));
    let w = start(&pool, config(&[("q", 1)]), "k", h.clone());
    wait_calls(&h, 3).await;
    w.stop().await;
    let order: Vec<String> = h
        .calls()
        .iter()
        .map(|(_, _, p)| p["label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order, ["high", "mid", "low"]);
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_backlog_in_one_queue_does_not_starve_another(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let slow: Vec<NewJob> = (0..20)
        .map(|_| NewJob::new("slow", "k", json!({})))
        .collect();
    queue.enqueue_many(&slow).await.unwrap();
    let h = Scripted::new(Duration::from_millis(300), |_, _| Ok(()));
    let w = start(&pool, config(&[("slow", 2), ("fast", 2)]), "k", h.clone());
    wait_calls(&h, 1).await;
    let id = enqueue(&queue, NewJob::new("fast", "k", json!({}))).await;
    wait_state(&queue, id, JobState::Succeeded).await;
    // It ran right away, not behind the backlog of slow jobs: most of them
    // have not even started yet.
    let slow_waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE queue = 'slow' AND state = 'available'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        slow_waiting >= 10,
        "only {slow_waiting} slow jobs left waiting"
    );
    w.stop().await;
}

/// Jobs of `owner`, due `ago` in the past, each with the owner in its
/// payload.
fn owned_jobs(owner: &str, n: usize, ago: chrono::Duration) -> Vec<NewJob> {
    (0..n)
        .map(|_| {
            let mut j = NewJob::new("q", "k", json!({ "owner": owner }));
            j.owner = Some(owner.into());
            j.run_at = Some(Utc::now() - ago);
            j
        })
        .collect()
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_large_backlog_does_not_starve_other_owners(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    // A's backlog is older than everyone else's jobs: in run_at order all of
    // it would run first.
    queue
        .enqueue_many(&owned_jobs("a", 2_000, chrono::Duration::minutes(10)))
        .await
        .unwrap();
    let small: Vec<String> = (b'b'..=b'k').map(|c| char::from(c).to_string()).collect();
    for owner in &small {
        queue
            .enqueue_many(&owned_jobs(owner, 10, chrono::Duration::minutes(1)))
            .await
            .unwrap();
    }
    let h = Scripted::new(Duration::ZERO, |_, _| Ok(()));
    let w = start(&pool, config(&[("q", 4)]), "k", h.clone());
    wait_calls(&h, 200).await;
    w.stop().await;
    let order: Vec<String> = h
        .calls()
        .iter()
        .map(|(_, _, p)| p["owner"].as_str().unwrap().to_owned())
        .collect();
    // Claims of 4 visit the owners in rotation: every small owner's first
    // job is among the first few, and their 100 jobs all ran among the
    // first 200 though 2,000 of A's were due before them.
    for owner in &small {
        let first = order.iter().position(|o| o == owner);
        assert!(
            first.is_some_and(|i| i < 20),
            "{owner}'s first job started at {first:?}: {order:?}"
        );
    }
    let small_done = order[..200].iter().filter(|o| *o != "a").count();
    assert_eq!(small_done, 100, "{order:?}");
}

/// Counts the jobs running at once per owner, and the most seen.
#[derive(Default)]
struct OwnerMeter {
    running: Mutex<std::collections::HashMap<String, usize>>,
    most: Mutex<std::collections::HashMap<String, usize>>,
    done: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Handler for OwnerMeter {
    async fn handle(&self, job: &JobContext) -> Result<(), JobError> {
        let owner = job.payload["owner"].as_str().unwrap_or_default().to_owned();
        {
            let mut running = self.running.lock().unwrap();
            let n = running.entry(owner.clone()).or_default();
            *n += 1;
            let mut most = self.most.lock().unwrap();
            let m = most.entry(owner.clone()).or_default();
            *m = (*m).max(*n);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        *self.running.lock().unwrap().get_mut(&owner).unwrap() -= 1;
        self.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn the_per_owner_cap_holds_across_workers(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    queue
        .enqueue_many(&owned_jobs("a", 60, chrono::Duration::minutes(1)))
        .await
        .unwrap();
    queue
        .enqueue_many(&owned_jobs("b", 20, chrono::Duration::seconds(1)))
        .await
        .unwrap();
    let mut ownerless = NewJob::new("q", "k", json!({ "owner": "" }));
    ownerless.run_at = Some(Utc::now() - chrono::Duration::minutes(2));
    queue.enqueue_many(&vec![ownerless; 20]).await.unwrap();
    let meter = Arc::new(OwnerMeter::default());
    // Two worker processes of 8 slots each; an owner may run 3 at once.
    let capped = || {
        let mut c = config(&[("q", 8)]);
        c.queues[0].max_running_per_owner = 3;
        c
    };
    let w1 = start(&pool, capped(), "k", meter.clone());
    let w2 = start(&pool, capped(), "k", meter.clone());
    wait_for("every job to run", Duration::from_secs(60), || async {
        let done = meter.done.load(std::sync::atomic::Ordering::SeqCst);
        if done == 100 { Ok(()) } else { Err(done) }
    })
    .await;
    w1.stop().await;
    w2.stop().await;
    let most = meter.most.lock().unwrap().clone();
    assert_eq!(most["a"], 3, "{most:?}");
    assert_eq!(most["b"], 3, "{most:?}");
    // Jobs without an owner are not capped.
    assert!(most[""] > 3, "{most:?}");
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn unique_keys_allow_one_pending_job(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let mut j = NewJob::new("q", "k", json!({}));
    j.unique_key = Some("sync:abc".into());
    let first = queue.enqueue(j.clone()).await.unwrap();
    let second = queue.enqueue(j.clone()).await.unwrap();
    assert!(matches!(first, Enqueued::Created(_)));
    assert!(matches!(&second, Enqueued::Existing(e) if e.id == first.job().id));
    let h = Scripted::new(Duration::ZERO, |_, _| Ok(()));
    let w = start(&pool, config(&[("q", 1)]), "k", h);
    wait_state(&queue, first.job().id, JobState::Succeeded).await;
    w.stop().await;
    // Finished jobs do not hold the key.
    assert!(matches!(
        queue.enqueue(j).await.unwrap(),
        Enqueued::Created(_)
    ));
}

/// Many enqueues at once share batch statements: every key still gets
/// exactly one job, every caller of a key gets that job, and each job is
/// reported created to exactly one caller. Concurrent batches holding the
/// same keys in different orders do not deadlock.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn concurrent_enqueues_keep_one_job_per_key(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let mut calls = Vec::new();
    for round in 0..20 {
        for key in 0..25 {
            // Keys in a different order each round.
            let key = (key * 7 + round) % 25;
            let mut j = NewJob::new("q", "k", json!({ "key": key }));
            j.unique_key = Some(format!("sync:{key}"));
            let queue = queue.clone();
            calls.push(tokio::spawn(async move {
                (key, queue.enqueue(j).await.unwrap())
            }));
        }
        // Keyless jobs are never folded together.
        let queue = queue.clone();
        calls.push(tokio::spawn(async move {
            (
                -1,
                queue
                    .enqueue(NewJob::new("q", "k", json!({})))
                    .await
                    .unwrap(),
            )
        }));
    }
    let mut job_of_key: std::collections::HashMap<i64, Uuid> = Default::default();
    let mut created = std::collections::HashMap::<Uuid, u32>::new();
    for call in calls {
        let (key, enqueued) = call.await.unwrap();
        if key >= 0 {
            let id = *job_of_key.entry(key).or_insert(enqueued.job().id);
            assert_eq!(enqueued.job().id, id, "key {key}");
            assert_eq!(
                enqueued.job().unique_key.as_deref(),
                Some(format!("sync:{key}").as_str())
            );
        }
        if let Enqueued::Created(j) = &enqueued {
            *created.entry(j.id).or_default() += 1;
        }
    }
    assert_eq!(job_of_key.len(), 25);
    assert_eq!(
        created.len(),
        25 + 20,
        "one creation per key, plus the keyless jobs"
    );
    assert!(created.values().all(|&n| n == 1));
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_all")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 45);
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn jobs_of_a_dead_worker_are_rescued_and_completed(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let id = enqueue(&queue, NewJob::new("q", "k", json!({}))).await;
    // A worker that claimed the job and died: it never heartbeats again.
    let dead = Uuid::now_v7();
    sqlx::query("INSERT INTO queue_workers (id, name, heartbeat_at) VALUES ($1, 'dead', now() - interval '1 minute')")
        .bind(dead)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET state = 'running', attempt = 1, locked_by = $2 WHERE id = $1")
        .bind(id)
        .bind(dead)
        .execute(&pool)
        .await
        .unwrap();
    // Another job of the dead worker's, on its last attempt: it dies, and
    // leaves the hot table for the finished jobs.
    let mut last = NewJob::new("q", "k", json!({}));
    last.max_attempts = 1;
    let last = enqueue(&queue, last).await;
    sqlx::query("UPDATE jobs SET state = 'running', attempt = 1, locked_by = $2 WHERE id = $1")
        .bind(last)
        .bind(dead)
        .execute(&pool)
        .await
        .unwrap();
    let h = Scripted::new(Duration::ZERO, |_, _| Ok(()));
    let w = start(&pool, config(&[("q", 1)]), "k", h.clone());
    let job = wait_state(&queue, id, JobState::Succeeded).await;
    let died = wait_state(&queue, last, JobState::Failed).await;
    w.stop().await;
    assert_eq!(h.calls().len(), 1, "ran exactly once more");
    assert_eq!(job.attempt, 2);
    assert!(job.errors[0]["error"].as_str().unwrap().contains("rescued"));
    assert!(
        died.errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("heartbeating")
    );
    assert!(died.finished_at.is_some());
    let in_history: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_done_dead WHERE id = $1")
        .bind(last)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_history, 1);
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_live_worker_keeps_its_jobs(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    // Longer than the orphan timeout: heartbeats must keep it ours.
    let h = Scripted::new(Duration::from_millis(2500), |_, _| Ok(()));
    let w = start(&pool, config(&[("q", 1)]), "k", h.clone());
    let id = enqueue(&queue, NewJob::new("q", "k", json!({}))).await;
    let job = wait_state(&queue, id, JobState::Succeeded).await;
    w.stop().await;
    assert_eq!(job.attempt, 1);
    assert_eq!(h.calls().len(), 1);
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn shutdown_finishes_short_jobs_and_hands_back_long_ones(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let h = Scripted::new(Duration::ZERO, |_, _| Ok(()));
    // Short jobs: finish within the grace period.
    let short = Scripted::new(Duration::from_millis(300), |_, _| Ok(()));
    let w = start(&pool, config(&[("q", 1)]), "k", short.clone());
    let a = enqueue(&queue, NewJob::new("q", "k", json!({}))).await;
    // Running in its handler (the database says `running` as soon as it is
    // claimed, a moment before the handler starts).
    wait_calls(&short, 1).await;
    w.stop().await;
    assert_eq!(
        queue.get(a).await.unwrap().unwrap().state,
        JobState::Succeeded
    );

    // Long jobs: handed back, the interrupted attempt not counted.
    let long = Scripted::new(Duration::from_secs(30), |_, _| Ok(()));
    let mut cfg = config(&[("q", 1)]);
    cfg.shutdown_timeout = Duration::from_millis(200);
    let w = start(&pool, cfg, "k", long.clone());
    let b = enqueue(&queue, NewJob::new("q", "k", json!({}))).await;
    wait_calls(&long, 1).await;
    w.stop().await;
    // Handed back, not waited for (it would have run for 30 s).
    let job = queue.get(b).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Available);
    assert_eq!(job.attempt, 0);
    assert!(job.locked_by.is_none());
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_workers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(workers, 0, "a stopped pool deregisters");
    // The next pool picks it up.
    let w = start(&pool, config(&[("q", 1)]), "k", h);
    wait_state(&queue, b, JobState::Succeeded).await;
    w.stop().await;
}

/// Restarting Postgres under load loses no job: the pool reconnects, claims
/// and completions are retried, and every job ends `succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_loses_no_job() {
    let pg = PrivatePg::start_new();
    assert!(pg.dir().exists());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&pg.url("postgres"))
        .await
        .unwrap();
    MIGRATIONS.run(&pool).await.unwrap();
    let queue = Queue::new(pool.clone());
    let n = 3000;
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob::new("q", "k", json!({ "i": i })))
        .collect();
    queue.enqueue_many(&jobs).await.unwrap();

    let h = Scripted::new(Duration::from_millis(10), |_, _| Ok(()));
    let w = start(&pool, config(&[("q", 8)]), "k", h.clone());
    wait_calls(&h, 300).await;
    pg.restart();
    // The restart really happened mid-drain.
    assert!(
        h.calls().len() < n as usize,
        "drained before the restart finished"
    );

    wait_succeeded(&pool, n).await;
    w.stop().await;
    // Every job ran at least once (at-least-once delivery).
    let ran: std::collections::HashSet<i64> = h
        .calls()
        .iter()
        .map(|(_, _, p)| p["i"].as_i64().unwrap())
        .collect();
    assert_eq!(ran.len(), n as usize);
}

/// Waits until `n` jobs have succeeded (through a database that may be
/// down for a while).
async fn wait_succeeded(pool: &PgPool, n: i64) {
    wait_for(
        &format!("{n} jobs to succeed"),
        Duration::from_secs(90),
        || async {
            let states: Vec<(String, i64)> =
                sqlx::query_as("SELECT state, count(*) FROM jobs_all GROUP BY state")
                    .fetch_all(pool)
                    .await
                    .map_err(|e| vec![(e.to_string(), 0)])?;
            let done = states
                .iter()
                .find(|(s, _)| s == "succeeded")
                .map_or(0, |(_, c)| *c);
            if done == n { Ok(()) } else { Err(states) }
        },
    )
    .await
}

/// A Postgres crash (`-m immediate`) undoes the last asynchronous commits
/// of the worker's bookkeeping: completions of jobs that finished, claims of
/// jobs that run. The worker survives and reconciles: no job stays
/// `running` (held by a live, heartbeating worker), none is lost, and none
/// runs twice at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_strands_no_job() {
    let pg = PrivatePg::start_new();
    let url = pg.url("postgres");
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    MIGRATIONS.run(&admin).await.unwrap();
    // The worker's bookkeeping as production runs it: asynchronous commits.
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.options([("synchronous_commit", "off")]))
        .await
        .unwrap();
    let queue = Queue::new(admin.clone());
    let n = 2000;
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| NewJob::new("q", "k", json!({ "i": i })))
        .collect();
    queue.enqueue_many(&jobs).await.unwrap();
    let h = Scripted::new(Duration::from_millis(20), |_, _| Ok(()));
    let w = start(&pool, config(&[("q", 16)]), "k", h.clone());
    for round in 1..=2 {
        wait_calls(&h, 400 * round).await;
        pg.crash();
        // Down for a few seconds, as a real crash and restart would be.
        tokio::time::sleep(Duration::from_secs(3)).await;
        pg.start();
    }
    assert!(h.calls().len() < n as usize, "drained before the crashes");
    wait_succeeded(&admin, n).await;
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs_all WHERE state <> 'succeeded'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(running, 0);
    w.stop().await;
    let ran: std::collections::HashSet<i64> = h
        .calls()
        .iter()
        .map(|(_, _, p)| p["i"].as_i64().unwrap())
        .collect();
    assert_eq!(ran.len(), n as usize, "every job ran");
}

/// A completion the database lost (as a crash undoes an asynchronous
/// commit) is written again by the worker that holds the job: the job does
/// not stay `running` under a live worker.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_lost_completion_is_written_again(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let h = Scripted::new(Duration::ZERO, |_, _| Ok(()));
    let stop = CancellationToken::new();
    let worker = WorkerPool::new(pool.clone(), config(&[("q", 1)])).handle("k", h.clone());
    let worker_id = worker.id();
    let s = stop.clone();
    let task = tokio::spawn(async move { worker.run(s).await });
    let id = enqueue(&queue, NewJob::new("q", "k", json!({}))).await;
    wait_state(&queue, id, JobState::Succeeded).await;
    // Undo the completion, as the crash would.
    sqlx::query(
        "WITH undone AS (DELETE FROM jobs_done WHERE id = $1 RETURNING *)
         INSERT INTO jobs (id, queue, kind, payload, state, priority, attempt, max_attempts,
                           run_at, locked_by, errors, created_at, started_at)
         SELECT id, queue, kind, payload, 'running', priority, attempt, max_attempts,
                run_at, $2, errors, created_at, started_at FROM undone",
    )
    .bind(id)
    .bind(worker_id)
    .execute(&pool)
    .await
    .unwrap();
    let job = wait_state(&queue, id, JobState::Succeeded).await;
    assert_eq!(job.attempt, 1, "written again, not run again");
    assert_eq!(h.calls().len(), 1);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[derive(Default)]
struct Recorded(Mutex<Vec<dashtam_queue::AbandonedJob>>);

#[async_trait]
impl dashtam_queue::AbandonHook for Recorded {
    async fn abandoned(
        &self,
        _conn: &mut sqlx::PgConnection,
        jobs: &[dashtam_queue::AbandonedJob],
    ) -> Result<(), sqlx::Error> {
        self.0.lock().unwrap().extend_from_slice(jobs);
        Ok(())
    }
}

/// A claim the database says a live worker holds but the worker is not
/// running (the claim's undoing was lost, say) is released by that worker,
/// and the abandoned attempt is reported; the job then runs.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_claim_the_worker_is_not_running_is_released(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let h = Scripted::new(Duration::ZERO, |_, _| Ok(()));
    let hook = Arc::new(Recorded::default());
    let stop = CancellationToken::new();
    let worker = WorkerPool::new(pool.clone(), config(&[("q", 1)]))
        .handle("k", h.clone())
        .on_abandoned(hook.clone());
    let worker_id = worker.id();
    let s = stop.clone();
    let task = tokio::spawn(async move { worker.run(s).await });
    // A job the database says this worker claimed (attempt 1), which it
    // never did (scheduled for later, so the worker cannot claim it first).
    let mut job = NewJob::new("q", "k", json!({}));
    job.run_at = Some(Utc::now() + chrono::Duration::hours(1));
    let id = enqueue(&queue, job).await;
    sqlx::query(
        "UPDATE jobs SET state = 'running', locked_by = $2, attempt = 1, started_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(worker_id)
    .execute(&pool)
    .await
    .unwrap();
    let job = wait_state(&queue, id, JobState::Succeeded).await;
    assert_eq!(
        job.attempt, 2,
        "the phantom attempt counted, then a real one"
    );
    let abandoned = hook.0.lock().unwrap().clone();
    assert_eq!(abandoned.len(), 1);
    assert_eq!((abandoned[0].id, abandoned[0].attempt), (id, 1));
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn finished_jobs_are_pruned_after_their_retention(pool: PgPool) {
    let queue = Queue::new(pool.clone());
    let jobs: Vec<NewJob> = (0..25).map(|_| NewJob::new("q", "k", json!({}))).collect();
    queue.enqueue_many(&jobs).await.unwrap();
    // 10 succeeded 40 days ago, 5 failed 40 days ago, 5 failed yesterday
    // (all in the default partitions: no day partition covers them), and
    // 5 pending; then 3 that succeeded in a day partition that has passed
    // its retention by the time pruning looks with a zero retention.
    sqlx::query(
        "WITH picked AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM jobs),
         moved AS (DELETE FROM jobs j USING picked p WHERE p.id = j.id AND p.n <= 20
                   RETURNING j.*, p.n)
         INSERT INTO jobs_done (id, queue, kind, payload, state, priority, attempt, max_attempts,
                                run_at, errors, created_at, finished_at, cancel_requested, watched)
         SELECT id, queue, kind, payload, CASE WHEN n <= 10 THEN 'succeeded' ELSE 'failed' END,
                priority, attempt, max_attempts, run_at, errors, created_at,
                CASE WHEN n <= 15 THEN now() - interval '40 days' ELSE now() - interval '1 day' END,
                false, false
         FROM moved",
    )
    .execute(&pool)
    .await
    .unwrap();
    let defaults: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM jobs_done_succeeded_default)
              + (SELECT count(*) FROM jobs_done_dead_default)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(defaults, 20);
    let retention = dashtam_queue::Retention {
        succeeded: Duration::from_secs(7 * 86_400),
        failed: Duration::from_secs(30 * 86_400),
        batch: 4,
    };
    let pruned = dashtam_queue::ops::prune(&pool.clone().into(), retention)
        .await
        .unwrap();
    assert_eq!(pruned, 15);
    let left: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM jobs_all GROUP BY state ORDER BY state")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(left, vec![("available".into(), 5), ("failed".into(), 5)]);

    // A job that succeeds now lands in today's partition (the migration
    // made it).
    let worker = Uuid::now_v7();
    let (id, started): (Uuid, chrono::DateTime<Utc>) = sqlx::query_as(
        "UPDATE jobs SET state = 'running', locked_by = $1, attempt = 1, started_at = now()
         WHERE id = (SELECT id FROM jobs ORDER BY id LIMIT 1) RETURNING id, started_at",
    )
    .bind(worker)
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query(include_str!("../../queries/complete_succeeded.sql"))
        .bind(vec![id])
        .bind(worker)
        .bind(vec![started])
        .execute(&pool)
        .await
        .unwrap();
    let partition: String =
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM jobs_done WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let today = Utc::now().format("%Y%m%d").to_string();
    assert_eq!(partition, format!("jobs_done_succeeded_p{today}"));

    // A day partition past its retention is dropped whole, its jobs counted.
    sqlx::query(
        "CREATE TABLE jobs_done_succeeded_old PARTITION OF jobs_done_succeeded
         FOR VALUES FROM (now() - interval '41 days') TO (now() - interval '39 days')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs_done (id, queue, kind, payload, state, priority, attempt, max_attempts,
                                run_at, errors, created_at, finished_at, cancel_requested, watched)
         SELECT gen_random_uuid(), 'q', 'k', '{}', 'succeeded', 0, 1, 1, now(), '[]', now(),
                now() - interval '40 days', false, false
         FROM generate_series(1, 3)",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        dashtam_queue::ops::prune(&pool.clone().into(), retention)
            .await
            .unwrap(),
        3
    );
    let old: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('jobs_done_succeeded_old')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(old, None, "the expired partition was dropped");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_done WHERE state = 'succeeded'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 1, "today's success is kept");
}
