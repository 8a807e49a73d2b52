//! Cancelling, retrying, discarding jobs and pausing queues, through the API.

use std::time::Duration;

use dashtam_testkit::wait_for;

use dashtam::app::Role;
use dashtam_sandbox::Faults;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{spawn_app, spawn_app_with, test_config};

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[sqlx::test(migrator = "MIGRATIONS")]
async fn cancelling_a_pending_job_frees_its_connection(pool: PgPool) {
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let conn = app.connect("alice", 1, 10).await;
    let job: Value = app.enqueue_sync("alice", &conn).await.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    let mallory = app.token("mallory");
    assert_eq!(
        app.post_as(&mallory, &format!("/api/v1/jobs/{id}/cancel"))
            .await
            .status(),
        404
    );
    let resp = app
        .post_as(&app.token("alice"), &format!("/api/v1/jobs/{id}/cancel"))
        .await;
    assert_eq!(resp.status(), 200);
    let cancelled: Value = resp.json().await.unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    let again = app
        .post_as(&app.token("alice"), &format!("/api/v1/jobs/{id}/cancel"))
        .await;
    assert_eq!(again.status(), 409);
    // The unique key is free again.
    assert_eq!(app.enqueue_sync("alice", &conn).await.status(), 202);
    assert_eq!(
        app.count("SELECT count(*) FROM audit_records WHERE action = 'job_cancelled'")
            .await,
        1
    );
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_cancelled_running_sync_stops_and_commits_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 1, 2000).await;
    app.sandbox.set_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    });
    let job: Value = app.enqueue_sync("alice", &conn).await.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    app.wait_pages("alice", &id, 2).await;
    let resp = app
        .post_as(&app.token("alice"), &format!("/api/v1/jobs/{id}/cancel"))
        .await;
    assert_eq!(resp.status(), 200);
    let flagged: Value = resp.json().await.unwrap();
    assert_eq!(flagged["state"], "running");
    assert_eq!(flagged["cancel_requested"], true);
    let done = app.wait_job("alice", &id).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert!(
        done["progress"]["pages"].as_u64().unwrap() < 20,
        "stopped early: {done}"
    );
    assert_eq!(app.count("SELECT count(*) FROM transactions").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM provider_connections WHERE sync_cursor IS NOT NULL")
            .await,
        0
    );
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn operators_retry_discard_and_pause(pool: PgPool) {
    // One connection failing for good (the breaker stays shut): it dies.
    let mut config = test_config();
    config.breaker.min_calls = 1000;
    let app = spawn_app_with(pool, &[Role::Api, Role::Worker], config).await;
    let op = app.operator_token("ops-1");
    let client = app.token("alice");
    let conn = app.connect("alice", 1, 30).await;

    // A dead job, retried by an operator once the provider is back.
    app.sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let dead = app.sync("alice", &conn).await;
    assert_eq!(dead["state"], "failed");
    let id = dead["id"].as_str().unwrap().to_owned();
    app.sandbox.set_faults(Faults::default());
    assert_eq!(
        app.post_as(&client, &format!("/api/v1/admin/jobs/{id}/retry"))
            .await
            .status(),
        403
    );
    let resp = app
        .post_as(&op, &format!("/api/v1/admin/jobs/{id}/retry"))
        .await;
    assert_eq!(resp.status(), 200);
    let done = app.wait_job("alice", &id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        app.post_as(&op, &format!("/api/v1/admin/jobs/{id}/retry"))
            .await
            .status(),
        409
    );
    // Operators see any tenant's job metadata.
    let seen = app
        .http
        .get(format!("{}/api/v1/jobs/{id}", app.api))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 200);

    // Pause: nothing is claimed; resume: it runs.
    assert_eq!(
        app.post_as(&client, "/api/v1/admin/queues/sync/pause")
            .await
            .status(),
        403
    );
    assert_eq!(
        app.post_as(&op, "/api/v1/admin/queues/sync/pause")
            .await
            .status(),
        204
    );
    let job: Value = app.enqueue_sync("alice", &conn).await.json().await.unwrap();
    let jid = job["id"].as_str().unwrap().to_owned();
    // The worker is alive and claiming (it heartbeats after the enqueue,
    // and its fetchers poll every 50 ms), yet the paused queue's job waits.
    let enqueued: chrono::DateTime<chrono::Utc> =
        job["created_at"].as_str().unwrap().parse().unwrap();
    wait_for(
        "a heartbeat after the enqueue",
        Duration::from_secs(30),
        || async {
            let beat: chrono::DateTime<chrono::Utc> =
                sqlx::query_scalar("SELECT max(heartbeat_at) FROM queue_workers")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            if beat > enqueued + chrono::Duration::milliseconds(200) {
                Ok(())
            } else {
                Err(beat)
            }
        },
    )
    .await;
    let waiting: Value = app
        .get("alice", &format!("/api/v1/jobs/{jid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(waiting["state"], "available");
    let sync = app.admin_entry(&op, "queues", "queue", "sync").await;
    assert_eq!(sync["paused"], true);
    assert_eq!(sync["states"]["available"], 1);
    assert_eq!(
        app.post_as(&op, "/api/v1/admin/queues/sync/resume")
            .await
            .status(),
        204
    );
    assert_eq!(app.wait_job("alice", &jid).await["state"], "succeeded");

    // Discard: finished jobs only.
    let del = |path: String| {
        let app = &app;
        let op = op.clone();
        async move {
            app.http
                .delete(format!("{}{path}", app.api))
                .bearer_auth(op)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(del(format!("/api/v1/admin/jobs/{jid}")).await.status(), 204);
    assert_eq!(del(format!("/api/v1/admin/jobs/{jid}")).await.status(), 404);
    let audit: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, actor FROM audit_records WHERE action LIKE 'job_%' OR action LIKE 'queue_%' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let actions: Vec<&str> = audit.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "job_retried",
            "queue_paused",
            "queue_resumed",
            "job_discarded"
        ]
    );
    assert!(audit.iter().all(|(_, actor)| actor == "user:ops-1"));
    app.stop().await;
}

/// `GET /api/v1/jobs`: a client's own jobs only (another tenant's never
/// show), filters by state, kind and connection, cursor pagination, and
/// clear 400s for bad filters; operators see everyone's.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn jobs_are_listed_per_tenant_with_filters_and_cursors(pool: PgPool) {
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let a = app.connect("alice", 1, 1).await;
    let b = app.connect("alice", 1, 1).await;
    let c = app.connect("bob", 1, 1).await;
    for (user, conn) in [("alice", &a), ("alice", &b), ("bob", &c)] {
        assert_eq!(app.enqueue_sync(user, conn).await.status(), 202);
    }
    let list = async |user: &str, query: &str| -> Value {
        let resp = app.get(user, &format!("/api/v1/jobs{query}")).await;
        assert_eq!(resp.status(), 200, "{query}");
        resp.json().await.unwrap()
    };
    let all = list("alice", "").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    assert!(all["next_cursor"].is_null());
    let page = list("alice", "?limit=1").await;
    assert_eq!(page["data"][0]["connection_id"], b.as_str(), "newest first");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let next = list("alice", &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(next["data"][0]["connection_id"], a.as_str());
    assert!(next["next_cursor"].is_null());
    let one = list(
        "alice",
        &format!("?connection_id={a}&state=available&kind=sync"),
    )
    .await;
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(list("alice", "?state=failed").await["data"], json!([]));
    // Another tenant's connection filter finds nothing, rather than an error.
    assert_eq!(
        list("alice", &format!("?connection_id={c}")).await["data"],
        json!([])
    );
    let ops = app
        .http
        .get(format!("{}/api/v1/jobs", app.api))
        .bearer_auth(app.operator_token("ops"))
        .send()
        .await
        .unwrap();
    let ops: Value = ops.json().await.unwrap();
    assert_eq!(ops["data"].as_array().unwrap().len(), 3);
    for bad in [
        "?state=done",
        "?kind=x",
        "?connection_id=nope",
        "?cursor=nope",
        "?limit=0",
        "?bogus=1",
    ] {
        assert_eq!(
            app.get("alice", &format!("/api/v1/jobs{bad}"))
                .await
                .status(),
            400,
            "{bad}"
        );
    }
    app.stop().await;
}

/// `GET /api/v1/jobs/{id}/events`, served by a second API daemon that does
/// no work itself: the job's state and progress arrive as Server-Sent
/// Events (through Postgres LISTEN/NOTIFY) and the stream ends with the job.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn job_events_stream_through_another_api_daemon_until_the_job_ends(pool: PgPool) {
    let worker = spawn_app(pool.clone()).await;
    let api = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let conn = worker.connect("alice", 2, 150).await;
    // Slow pages: the sync reports progress a few times before it ends.
    worker.sandbox.set_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    });
    let job: Value = worker
        .enqueue_sync("alice", &conn)
        .await
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(
        api.get("bob", &format!("/api/v1/jobs/{id}/events"))
            .await
            .status(),
        404,
        "another tenant's job does not exist for bob"
    );
    let resp = api.get("alice", &format!("/api/v1/jobs/{id}/events")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(Duration::from_secs(30), resp.text())
        .await
        .expect("the stream ends when the job does")
        .unwrap();
    let events: Vec<Value> = body
        .split("\n\n")
        .filter(|e| e.lines().any(|l| l == "event: job"))
        .map(|e| {
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            serde_json::from_str(data).unwrap()
        })
        .collect();
    assert!(events.len() >= 3, "{body}");
    assert_eq!(events.last().unwrap()["state"], "succeeded");
    let pages: Vec<u64> = events
        .iter()
        .filter_map(|e| e["progress"]["pages"].as_u64())
        .collect();
    assert!(pages.windows(2).all(|w| w[0] <= w[1]), "{pages:?}");
    assert!(pages.len() >= 2, "progress was streamed: {pages:?}");
    api.stop().await;
    worker.stop().await;
}
