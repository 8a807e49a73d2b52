//! The whole sync path through PgBouncer in transaction pooling mode
//! (Debian's `pgbouncer`, started privately in front of the shared server):
//! the API, the workers, the scheduler, every statement through the pooler,
//! with a direct connection for LISTEN and without one (polling).

use std::process::Command;

use dashtam::app::Role;
use dashtam_testkit::PrivatePgBouncer;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{spawn_app_on, test_config};

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Server connections PgBouncer may open to the database: far fewer than
/// the daemon's pools ask for, so statements of different clients share
/// server connections all the time (a statement split across two of them
/// would fail).
const POOL_SIZE: u32 = 2;

/// PgBouncer's SHOW STATS for `db`: transactions and queries it carried.
fn bouncer_stats(bouncer: &PrivatePgBouncer, db: &str) -> (u64, u64) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &bouncer.port.to_string()])
        .args([
            "-U",
            "postgres",
            "-d",
            "pgbouncer",
            "-AtF",
            "|",
            "-c",
            "SHOW STATS",
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = text
        .lines()
        .map(|l| l.split('|').collect::<Vec<_>>())
        .find(|cols| cols[0] == db)
        .unwrap_or_else(|| panic!("no stats for {db} in {text}"));
    // database | total_xact_count | total_query_count | ...
    (row[1].parse().unwrap(), row[2].parse().unwrap())
}

async fn sync_many_through_the_pooler(pool: PgPool, direct: bool) {
    let db = pool
        .connect_options()
        .get_database()
        .expect("a test database")
        .to_owned();
    let bouncer = PrivatePgBouncer::start(5432, POOL_SIZE);
    let mut config = test_config();
    config.database.transaction_pooler = true;
    if direct {
        config.database.direct_url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    }
    let app = spawn_app_on(
        &bouncer.url(&db),
        &[Role::Api, Role::Worker, Role::Scheduler],
        config.clone(),
    )
    .await;
    // The schema check a daemon runs at start, through the pooler.
    let through = dashtam::app::connect(&config, &bouncer.url(&db))
        .await
        .unwrap();
    dashtam::app::ensure_schema(&through, false).await.unwrap();

    // Five users' connections synced at once, while they read their jobs.
    let users: Vec<String> = (0..5).map(|n| format!("user{n}")).collect();
    let mut conns = Vec::new();
    for user in &users {
        conns.push(app.connect(user, 2, 40).await);
    }
    let syncs = users
        .iter()
        .zip(&conns)
        .map(|(user, conn)| app.sync(user, conn));
    let done: Vec<Value> = futures::future::join_all(syncs).await;
    for job in &done {
        assert_eq!(job["state"], "succeeded", "{job}\n{}", bouncer.log());
        // Not one statement failed on the way (a retry would show here).
        assert_eq!(job["attempt"], 1, "{job}");
        assert_eq!(job["progress"]["transactions"], 80, "{job}");
    }
    for user in &users {
        let page: Value = app
            .get(user, "/api/v1/transactions?limit=1000")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["data"].as_array().unwrap().len(), 80, "{page}");
    }
    // Each sync's ATTEMPT then OUTCOME is on record.
    for job in &done {
        let phases: Vec<(String, String)> = sqlx::query_as(
            "SELECT phase, outcome FROM audit_records
             WHERE correlation_id = $1 AND action LIKE 'sync%' ORDER BY id",
        )
        .bind(job["id"].as_str().unwrap())
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(
            phases,
            [
                ("attempt".into(), "attempted".into()),
                ("outcome".into(), "succeeded".into())
            ],
            "{job}"
        );
    }
    // A second round, syncing again what changed: the incremental path.
    for (user, conn) in users.iter().zip(&conns).take(2) {
        let again = app.sync(user, conn).await;
        assert_eq!(again["state"], "succeeded", "{again}");
    }
    let (xacts, queries) = bouncer_stats(&bouncer, &db);
    assert!(
        xacts > 100 && queries > xacts,
        "the daemon's statements went through PgBouncer: {xacts} transactions, {queries} queries"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn syncs_run_through_pgbouncer_in_transaction_mode_with_a_direct_listen(pool: PgPool) {
    sync_many_through_the_pooler(pool, true).await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn syncs_run_through_pgbouncer_in_transaction_mode_polling_without_listen(pool: PgPool) {
    sync_many_through_the_pooler(pool, false).await;
}
