//! End-to-end syncs through the HTTP API against the sandbox provider.

use dashtam_sandbox::{Advance, Faults, ScriptedFault};
use serde_json::Value;
use sqlx::PgPool;

use dashtam::app::Role;

use crate::helpers::{spawn_app, spawn_app_with, test_config};

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[sqlx::test(migrator = "MIGRATIONS")]
async fn sync_through_the_api_normalizes_and_audits(pool: PgPool) {
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 2, 150).await;

    let resp = app.enqueue_sync("alice", &conn).await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = resp.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/jobs/{job_id}"));
    assert_eq!(job["connection_id"], conn.as_str());

    let done = app.wait_job("alice", job_id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["progress"]["transactions"], 300);
    assert_eq!(done["progress"]["pages"], 3);
    assert!(done["finished_at"].is_string());

    let accounts: Value = app
        .get("alice", "/api/v1/accounts")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(accounts["data"].as_array().unwrap().len(), 2);
    assert_eq!(accounts["data"][0]["currency"], "USD");

    // Page through every transaction with the API's cursor.
    let mut seen = Vec::new();
    let mut path = "/api/v1/transactions?limit=128".to_owned();
    loop {
        let page: Value = app.get("alice", &path).await.json().await.unwrap();
        seen.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/transactions?limit=128&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 300);
    // Plaid's positive (money out) became negative; amounts are exact decimals.
    let sandbox_first = app.sandbox.access_tokens();
    assert_eq!(sandbox_first.len(), 1);
    let income = seen.iter().filter(|t| t["txn_type"] == "income").count();
    let spend = seen.iter().filter(|t| t["txn_type"] == "purchase").count();
    assert!(income > 0 && spend > 0);
    for t in &seen {
        let amount: rust_decimal::Decimal = t["amount"].as_str().unwrap().parse().unwrap();
        match t["txn_type"].as_str().unwrap() {
            "income" => assert!(amount.is_sign_positive(), "{t}"),
            _ => assert!(amount.is_sign_negative(), "{t}"),
        }
        assert!(amount.scale() <= 2, "{t}");
    }
    let pending = seen.iter().filter(|t| t["status"] == "pending").count();
    assert_eq!(pending, 6, "the newest 2% are pending");

    // ATTEMPT then OUTCOME, correlated with the job.
    let audit: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT action, phase, outcome FROM audit_records WHERE correlation_id = $1 ORDER BY id",
    )
    .bind(job_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        vec![
            (
                "sync_attempted".into(),
                "attempt".into(),
                "attempted".into()
            ),
            (
                "sync_succeeded".into(),
                "outcome".into(),
                "succeeded".into()
            ),
        ]
    );
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn resyncing_never_duplicates(pool: PgPool) {
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 2, 150).await;
    assert_eq!(app.sync("alice", &conn).await["state"], "succeeded");
    let before = app.count("SELECT count(*) FROM transactions").await;
    assert_eq!(before, 300);

    // Nothing new: the cursor is current, nothing is fetched or written.
    let again = app.sync("alice", &conn).await;
    assert_eq!(again["state"], "succeeded");
    assert_eq!(again["progress"]["transactions"], 0);

    // Forget the cursor: the whole history comes again, and the upsert
    // neither duplicates nor rewrites a single row.
    sqlx::query("UPDATE provider_connections SET sync_cursor = NULL")
        .execute(&app.pool)
        .await
        .unwrap();
    let full = app.sync("alice", &conn).await;
    assert_eq!(full["state"], "succeeded");
    assert_eq!(full["progress"]["transactions"], 300);
    assert_eq!(full["progress"]["upserted"], 0);
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, before);
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn pending_posts_modifications_and_removals_are_applied(pool: PgPool) {
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 1, 200).await;
    assert_eq!(app.sync("alice", &conn).await["state"], "succeeded");
    let token = app.only_item();
    let done = app
        .sandbox
        .advance(
            &token,
            Advance {
                post_pending: true,
                modify: 3,
                remove: 2,
                add: 4,
            },
        )
        .unwrap();
    assert_eq!(done.posted, 4);

    let job = app.sync("alice", &conn).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["progress"]["removed"], 6);

    // Each pending row is tombstoned and linked from the posted row.
    let links: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT posted.provider_transaction_id, pending.provider_transaction_id, posted.status
         FROM transactions posted
         LEFT JOIN transactions pending ON pending.id = posted.replaces_transaction_id
         WHERE posted.pending_provider_transaction_id IS NOT NULL",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(links.len(), 4);
    for (posted, pending, status) in &links {
        assert_eq!(Some(posted.trim_end_matches("-posted")), pending.as_deref());
        assert_eq!(status, "settled");
    }
    assert_eq!(
        app.count(
            "SELECT count(*) FROM transactions WHERE status = 'pending' AND removed_at IS NOT NULL"
        )
        .await,
        4
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM transactions WHERE status <> 'pending' AND removed_at IS NOT NULL"
        )
        .await,
        2
    );
    // Modifications update the row in place (description and amount).
    assert_eq!(
        app.count("SELECT count(*) FROM transactions WHERE description LIKE '%(adjusted 1)'")
            .await,
        3
    );
    // 200 initial + 4 posted + 4 new rows; the API shows the live ones.
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 208);
    let live: Value = app
        .get("alice", "/api/v1/transactions?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(live["data"].as_array().unwrap().len(), 202);
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn mutation_during_pagination_restarts_from_the_first_cursor(pool: PgPool) {
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 2, 150).await;
    // Page 1 succeeds, page 2 reports the mutation.
    app.sandbox.set_faults(Faults::default());
    let calls_before = app.sandbox.stats().transactions_sync_calls;
    app.sandbox
        .push_fault(ScriptedFault::MutationDuringPagination);
    let job = app.sync("alice", &conn).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["progress"]["restarts"], 1);
    assert_eq!(job["progress"]["transactions"], 300);
    // 1 refused call + 3 pages after the restart.
    assert_eq!(
        app.sandbox.stats().transactions_sync_calls - calls_before,
        4
    );
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 300);
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn data_changing_mid_pagination_is_detected_and_retried(pool: PgPool) {
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 1, 500).await;
    let token = app.only_item();
    // Slow pages (5 of them) so the provider's data can change between them.
    app.sandbox.set_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    });
    let resp = app.enqueue_sync("alice", &conn).await;
    let job: Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    // Change the data once the first page is in: pages are still to come.
    app.wait_pages("alice", &id, 1).await;
    app.sandbox
        .advance(
            &token,
            Advance {
                add: 5,
                ..Advance::default()
            },
        )
        .unwrap();
    let done = app.wait_job("alice", &id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(
        done["progress"]["restarts"].as_u64().unwrap() >= 1,
        "{done}"
    );
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 505);
    app.stop().await;
}

/// A flaky page (a 500, then a 429 asking for 1 s) is retried in place: it
/// costs that page, not the attempt and the pages fetched before it.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_flaky_page_is_retried_in_place(pool: PgPool) {
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 1, 250).await;
    app.sandbox.push_fault(ScriptedFault::ServerError);
    app.sandbox.push_fault(ScriptedFault::RateLimited {
        retry_after_secs: 1,
        http_date: false,
    });
    let job = app.sync("alice", &conn).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 1, "{job}");
    assert_eq!(job["errors"].as_array().unwrap().len(), 0);
    assert_eq!(app.sandbox.stats().faults_injected, 2);
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 250);
    app.stop().await;
}

/// Past its in-place retries a transient error of a provider that is
/// otherwise up (it just answered a whole sync) fails the attempt, retried
/// later; a 429 past its in-place retries pauses the provider and the job
/// waits without spending an attempt. Every attempt is audited.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn server_errors_and_rate_limits_are_retried_with_delay(pool: PgPool) {
    let mut config = test_config();
    config.sync.page_retries = 0;
    let app = spawn_app_with(pool, &[Role::Api, Role::Worker], config).await;
    let conn = app.connect("alice", 1, 50).await;
    let first = app.sync("alice", &conn).await;
    assert_eq!(first["state"], "succeeded", "{first}");
    app.sandbox.push_fault(ScriptedFault::ServerError);
    app.sandbox.push_fault(ScriptedFault::RateLimited {
        retry_after_secs: 1,
        http_date: false,
    });
    let job = app.sync("alice", &conn).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    // The 500 cost an attempt; the 429 did not.
    assert_eq!(job["attempt"], 2, "{job}");
    let errors = job["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{job}");
    assert!(
        errors[0]["error"].as_str().unwrap().contains("HTTP 500"),
        "{job}"
    );
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 50);
    // Every attempt is audited: the first sync, then 3 runs: 1 failed, 1
    // deferred, 1 success.
    assert_eq!(
        app.count("SELECT count(*) FROM audit_records WHERE phase = 'attempt'")
            .await,
        4
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_records WHERE outcome = 'failed'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_records WHERE outcome = 'deferred'")
            .await,
        1
    );
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn persistent_server_errors_exhaust_attempts_and_write_nothing(pool: PgPool) {
    // One connection's errors, not a provider outage: the breaker stays shut.
    let mut config = test_config();
    config.breaker.min_calls = 1000;
    let app = spawn_app_with(pool, &[Role::Api, Role::Worker], config).await;
    let conn = app.connect("alice", 1, 50).await;
    app.sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let job = app.sync("alice", &conn).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempt"], 4);
    assert_eq!(job["errors"].as_array().unwrap().len(), 4);
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 0);
    // The connection's cursor did not move; the next sync starts clean.
    app.sandbox.set_faults(Faults::default());
    assert_eq!(app.sync("alice", &conn).await["state"], "succeeded");
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 50);
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn refused_credentials_fail_at_once_and_require_reauth(pool: PgPool) {
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 1, 50).await;
    // The provider forgets the item: its access token is now invalid.
    let token = app.only_item();
    app.sandbox.forget_item(&token);
    let job = app.sync("alice", &conn).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempt"], 1, "no retries for refused credentials");
    let c: Value = app
        .get("alice", &format!("/api/v1/connections/{conn}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(c["status"], "reauth_required");
    let resp = app.enqueue_sync("alice", &conn).await;
    assert_eq!(resp.status(), 409);
    app.stop().await;
}
