//! `/metrics` after a sync: the counters moved as the work did.

use dashtam_testkit::wait_for;
use sqlx::PgPool;

use dashtam::app::Role;

use crate::cli::url_of;
use crate::helpers::{
    DaemonProcess, sample, serve_sandbox, spawn_app, spawn_app_with, test_config,
};

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[sqlx::test(migrator = "MIGRATIONS")]
async fn metrics_follow_a_sync(pool: PgPool) {
    let app = spawn_app(pool).await;
    let before = app.scrape().await;
    let conn = app.connect("alice", 2, 150).await;
    let job = app.sync("alice", &conn).await;
    assert_eq!(job["state"], "succeeded");
    // Completion is batched: wait for the completer's count.
    let succeeded = r#"dashtam_jobs_total{event="succeeded",kind="sync",queue="sync"}"#;
    let after = wait_for(
        "the success to be counted",
        std::time::Duration::from_secs(30),
        || async {
            let after = app.scrape().await;
            if sample(&after, succeeded) > sample(&before, succeeded) {
                Ok(after)
            } else {
                Err("not yet")
            }
        },
    )
    .await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);

    assert!(
        sample(&after, "dashtam_build_info{version=\"0.1.0\"}") == 1.0,
        "{after}"
    );
    assert!(delta(r#"dashtam_jobs_total{event="enqueued",kind="sync",queue="sync"}"#) >= 1.0);
    assert!(delta(r#"dashtam_jobs_total{event="started",kind="sync",queue="sync"}"#) >= 1.0);
    assert!(delta(r#"dashtam_jobs_total{event="succeeded",kind="sync",queue="sync"}"#) >= 1.0);
    assert!(delta(r#"dashtam_transactions_ingested_total{provider="plaid"}"#) >= 300.0);
    // 3 pages of 100 plus the token exchange.
    assert!(
        delta(
            r#"dashtam_provider_requests_total{endpoint="/transactions/sync",provider="plaid",status="200"}"#
        ) >= 3.0,
        "{after}"
    );
    assert!(
        delta(
            r#"dashtam_http_requests_total{method="POST",route="/api/v1/connections/{connection_id}/syncs",status="202"}"#
        ) >= 1.0,
        "{after}"
    );
    assert!(after.contains("dashtam_job_pickup_seconds_bucket"));
    assert!(after.contains("dashtam_job_duration_seconds_bucket"));
    // No ids in label values: route templates only.
    assert!(
        !after.contains(&conn),
        "a connection id leaked into a label"
    );
    app.stop().await;
}

/// Gauges read from the database: queue depth, the oldest waiting job's
/// age, connections by status, and this process's pools.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn gauges_show_the_queue_and_the_connections(pool: PgPool) {
    // API only: the enqueued sync stays available.
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let conn = app.connect("alice", 1, 1).await;
    assert_eq!(app.enqueue_sync("alice", &conn).await.status(), 202);
    let text = wait_for(
        "the gauges to move",
        std::time::Duration::from_secs(30),
        || async {
            let text = app.scrape().await;
            if sample(
                &text,
                r#"dashtam_queue_jobs{queue="sync",state="available"}"#,
            ) == 1.0
            {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await;
    assert_eq!(
        sample(
            &text,
            r#"dashtam_connections{provider="plaid",status="active"}"#
        ),
        1.0
    );
    assert!(text.contains(r#"dashtam_queue_oldest_available_age_seconds{queue="sync"}"#));
    assert!(
        sample(
            &text,
            r#"dashtam_db_pool_connections{pool="main",state="idle"}"#
        ) >= 1.0
    );
    app.stop().await;
}

/// A daemon without the api role still answers probes and scrapes, and
/// nothing else.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_worker_only_daemon_serves_health_and_metrics(pool: PgPool) {
    let app = spawn_app_with(pool, &[Role::Worker], test_config()).await;
    for (path, status) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/api/v1/connections", 404),
    ] {
        let resp = app
            .http
            .get(format!("{}{path}", app.api))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
    }
    assert!(app.scrape().await.contains("dashtam_up 1"));
    app.stop().await;
}

/// JSON log lines carry their context through spans: a request's lines its
/// request id (a trusted proxy's X-Request-Id), a job's lines its job id,
/// connection id and attempt.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn log_lines_carry_request_and_job_context(pool: PgPool) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sandbox = dashtam_sandbox::Sandbox::new(dashtam_sandbox::SandboxConfig::default());
    let sandbox_url = serve_sandbox(&sandbox, &shutdown).await;
    let daemon = DaemonProcess::start_with(
        &url_of(&pool),
        &sandbox_url,
        "info,dashtam_api=debug",
        &[("DASHTAM__HTTP__TRUSTED_PROXIES", r#"["127.0.0.1"]"#)],
    )
    .await;
    let http = reqwest::Client::new();
    let token = daemon.token("alice");
    let public_token = crate::helpers::sandbox_public_token(&http, &sandbox_url).await;
    let resp = http
        .post(format!("{}/api/v1/connections", daemon.api))
        .bearer_auth(&token)
        .header("x-request-id", "lb-4711")
        .json(&serde_json::json!({ "provider": "plaid", "public_token": public_token }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-request-id"], "lb-4711");
    let conn: serde_json::Value = resp.json().await.unwrap();
    let job: serde_json::Value =
        serde_json::from_str(&daemon.sync(&token, conn["id"].as_str().unwrap()).await).unwrap();
    let logs = daemon.terminate();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let field = |line: &serde_json::Value, span: &str, key: &str| -> Option<String> {
        line["spans"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == span)
            .and_then(|s| {
                s[key]
                    .as_str()
                    .map(str::to_owned)
                    .or(s[key].as_i64().map(|n| n.to_string()))
            })
    };
    let handled = lines
        .iter()
        .find(|l| l["message"] == "request handled" && l["route"] == "/api/v1/connections")
        .expect("a request line");
    assert_eq!(
        field(handled, "request", "request_id").as_deref(),
        Some("lb-4711")
    );
    let committed = lines
        .iter()
        .find(|l| l["message"] == "sync committed")
        .expect("a job line");
    assert_eq!(
        field(committed, "job", "job_id"),
        job["id"].as_str().map(str::to_owned)
    );
    // The job's subject: the connection it syncs.
    assert_eq!(
        field(committed, "job", "subject"),
        conn["id"].as_str().map(str::to_owned)
    );
    assert_eq!(field(committed, "job", "attempt").as_deref(), Some("1"));
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    shutdown.cancel();
}
