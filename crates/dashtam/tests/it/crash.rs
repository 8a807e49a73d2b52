//! Crash safety with real processes: a worker killed with SIGKILL mid-sync
//! loses nothing and duplicates nothing.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashtam_testkit::wait_for;

use dashtam_domain::jobs::SyncJob;
use dashtam_domain::model::ProviderKind;
use dashtam_domain::ports::ProviderCredentials;
use dashtam_domain::{ConnectionId, UserId};
use dashtam_queue::{NewJob, Queue};
use dashtam_sandbox::{Faults, ItemSpec, Sandbox, SandboxConfig};
use dashtam_store::connections::NewConnection;
use dashtam_store::{Cipher, Store};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cli::url_of;
use crate::helpers::serve_sandbox;

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

pub struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(url: &str, sandbox: &str, key: &SecretString) -> Worker {
    spawn_worker_with(url, sandbox, key, &[])
}

pub fn spawn_worker_with(
    url: &str,
    sandbox: &str,
    key: &SecretString,
    env: &[(&str, &str)],
) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_dashtam"))
        .envs(env.iter().copied())
        .args([
            "serve",
            "--role",
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            url,
        ])
        .env_remove("RUST_LOG")
        .env("DASHTAM__CRYPTO__ACTIVE_KEY", "k1")
        .env("DASHTAM__CRYPTO__KEYS__K1", key.expose_secret())
        .env("DASHTAM__PROVIDERS__PLAID__BASE_URL", sandbox)
        .env("DASHTAM__SYNC__PAGE_SIZE", "100")
        .env("DASHTAM__WORKER__POLL_INTERVAL_MS", "50")
        .env("DASHTAM__WORKER__HEARTBEAT_INTERVAL_SECS", "1")
        .env("DASHTAM__WORKER__ORPHAN_TIMEOUT_SECS", "3")
        .env("DASHTAM__WORKER__RESCUE_INTERVAL_SECS", "1")
        .env("DASHTAM__LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Worker(child)
}

async fn job_state(pool: &PgPool, id: uuid::Uuid) -> (String, i32, Option<serde_json::Value>) {
    sqlx::query_as("SELECT state, attempt, progress FROM jobs_all WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A sandbox with one 2,000-transaction item behind slow pages, a
/// connection to it, and its sync job enqueued.
struct Setup {
    url: String,
    sandbox: Sandbox,
    sandbox_url: String,
    key: SecretString,
    job: uuid::Uuid,
    shutdown: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn setup(pool: &PgPool) -> Setup {
    let url = url_of(pool);
    let shutdown = CancellationToken::new();
    let sandbox = Sandbox::new(SandboxConfig::default());
    let sandbox_url = serve_sandbox(&sandbox, &shutdown).await;
    let token = sandbox.create_item(ItemSpec {
        accounts: Some(2),
        transactions_per_account: Some(1000),
    });
    // Slow pages: the sync takes 20 × 250 ms, long enough to kill it mid-way.
    sandbox.set_faults(Faults {
        latency_ms: 250,
        ..Faults::default()
    });

    let key = Cipher::generate_key().unwrap();
    let cipher = Cipher::new("k1", &[("k1".to_owned(), key.clone())].into()).unwrap();
    let store = Store::new(pool.clone(), Arc::new(cipher));
    let conn = store
        .create_connection(NewConnection {
            user: &UserId::parse("alice").unwrap(),
            provider: ProviderKind::Plaid,
            credentials: &ProviderCredentials {
                access_token: SecretString::from(token),
                refresh_token: None,
            },
            access_token_expires_at: None,
            refresh_token_expires_at: None,
            provider_item_id: None,
            correlation_id: None,
        })
        .await
        .unwrap();
    let queue = Queue::new(pool.clone());
    let new = NewJob::from_args(&SyncJob::new(ConnectionId(conn.id))).unwrap();
    let id = queue.enqueue(new).await.unwrap().job().id;
    Setup {
        url,
        sandbox,
        sandbox_url,
        key,
        job: id,
        shutdown,
    }
}

/// Waits until the sync is running and a few pages in.
async fn wait_mid_sync(pool: &PgPool, id: uuid::Uuid) {
    wait_for("the sync to get going", Duration::from_secs(30), || async {
        let (state, _, progress) = job_state(pool, id).await;
        let pages = progress
            .as_ref()
            .and_then(|p| p["pages"].as_u64())
            .unwrap_or(0);
        if state == "running" && pages >= 4 {
            Ok(())
        } else {
            Err((state, pages))
        }
    })
    .await
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn sigterm_hands_an_unfinished_sync_back_and_exits_cleanly(pool: PgPool) {
    let s = setup(&pool).await;
    let mut worker = spawn_worker_with(
        &s.url,
        &s.sandbox_url,
        &s.key,
        &[("DASHTAM__WORKER__SHUTDOWN_TIMEOUT_SECS", "1")],
    );
    wait_mid_sync(&pool, s.job).await;
    let pid = worker.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = worker.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let (state, attempt, _) = job_state(&pool, s.job).await;
    assert_eq!(
        (state.as_str(), attempt),
        ("available", 0),
        "handed back uncharged"
    );
    let txns: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(txns, 0, "nothing partial committed");
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_workers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(workers, 0, "deregistered");
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_worker_killed_mid_sync_loses_and_duplicates_nothing(pool: PgPool) {
    let s = setup(&pool).await;
    let (url, sandbox, sandbox_url, key, id) = (
        s.url.clone(),
        s.sandbox.clone(),
        s.sandbox_url.clone(),
        s.key.clone(),
        s.job,
    );
    let mut first = spawn_worker(&url, &sandbox_url, &key);
    wait_mid_sync(&pool, id).await;
    // SIGKILL: no shutdown handler, no hand-back.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let killed_at = Instant::now();

    // Nothing is written before the last page: nothing partial is visible.
    let count = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM transactions")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(count(pool.clone()).await, 0);
    assert_eq!(
        job_state(&pool, id).await.0,
        "running",
        "held by the dead worker"
    );

    sandbox.set_faults(Faults::default());
    let _second = spawn_worker(&url, &sandbox_url, &key);
    wait_for("the job to be rescued", Duration::from_secs(60), || async {
        let (state, attempt, _) = job_state(&pool, id).await;
        if state != "running" || attempt > 1 {
            Ok(())
        } else {
            Err(state)
        }
    })
    .await;
    // A figure, not an assertion: orphan timeout 3 s + rescue interval 1 s.
    println!(
        "{}",
        serde_json::json!({ "rescued_after_s": killed_at.elapsed().as_secs_f64() })
    );
    let attempt = wait_for("the job to succeed", Duration::from_secs(60), || async {
        let (state, attempt, _) = job_state(&pool, id).await;
        if state == "succeeded" {
            Ok(attempt)
        } else {
            Err(state)
        }
    })
    .await;
    assert_eq!(attempt, 2);
    assert_eq!(
        count(pool.clone()).await,
        2000,
        "every transaction exactly once"
    );
    let dupes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT provider_transaction_id FROM transactions
           GROUP BY account_id, provider_transaction_id HAVING count(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dupes, 0);
    let audit: Vec<(String,)> =
        sqlx::query_as("SELECT action FROM audit_records WHERE correlation_id = $1 ORDER BY id")
            .bind(id.to_string())
            .fetch_all(&pool)
            .await
            .unwrap();
    let actions: Vec<&str> = audit.iter().map(|(a,)| a.as_str()).collect();
    // The killed attempt is closed (`abandoned`, when the job was rescued),
    // the second one succeeded.
    assert_eq!(
        actions,
        [
            "sync_attempted",
            "sync_abandoned",
            "sync_attempted",
            "sync_succeeded"
        ]
    );
}
