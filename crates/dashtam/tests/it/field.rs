//! What the field found: slow providers, clients that give up or send
//! what nobody expects, Postgres going away. Each test failed before the
//! fix it names.

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine;
use dashtam::app::Role;
use dashtam_sandbox::Faults;
use dashtam_testkit::{PrivatePg, wait_for};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{
    DaemonProcess, TestApp, force_finish, serve_sandbox, spawn_app_on, spawn_app_with, test_config,
};

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Transactions of this database older than `age` (other than ours): what
/// pins the xmin horizon and holds pool connections.
async fn old_transactions(pool: &PgPool, age: Duration) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT coalesce(state, ''), left(coalesce(query, ''), 120) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND xact_start < clock_timestamp() - $1 * interval '1 millisecond'",
    )
    .bind(age.as_millis() as f64)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// No database transaction stays open while a provider answers slowly: not
/// a sync waiting on its next page, not a revocation, not a token refresh.
/// Before: the sync held one transaction from its first page to its
/// commit, and DELETE and refresh held a row lock across the provider call.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn no_transaction_stays_open_across_a_provider_call(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &[Role::Api, Role::Worker], test_config()).await;
    let conn = app.connect("alice", 1, 300).await;
    let (schwab, _) = app.connect_schwab("alice", 1, 10).await;
    let mut deletes = Vec::new();
    for _ in 0..20 {
        deletes.push(app.connect("carol", 1, 1).await);
    }
    app.sandbox.set_faults(Faults {
        latency_ms: 1500,
        auth_latency_ms: 1500,
        ..Faults::default()
    });
    // A sync waiting on its second page.
    let job: Value = app.enqueue_sync("alice", &conn).await.json().await.unwrap();
    app.wait_pages("alice", job["id"].as_str().unwrap(), 1)
        .await;
    let old = old_transactions(&pool, Duration::from_millis(500)).await;
    assert!(
        old.is_empty(),
        "transactions open while the sync waits: {old:?}"
    );

    // A token refresh waiting on the token endpoint (forced: expired).
    sqlx::query(
        "UPDATE provider_connections SET access_token_expires_at = now() WHERE id = $1::uuid",
    )
    .bind(&schwab)
    .execute(&pool)
    .await
    .unwrap();
    let refresh: Value = app
        .enqueue_sync("alice", &schwab)
        .await
        .json()
        .await
        .unwrap();
    wait_for(
        "the refresh to hold the token lease",
        Duration::from_secs(20),
        || async {
            let held: bool = sqlx::query_scalar(
            "SELECT token_lease_holder IS NOT NULL FROM provider_connections WHERE id = $1::uuid",
        )
        .bind(&schwab)
        .fetch_one(&pool)
        .await
        .unwrap();
            if held { Ok(()) } else { Err("not yet") }
        },
    )
    .await;
    let old = old_transactions(&pool, Duration::from_millis(500)).await;
    assert!(
        old.is_empty(),
        "transactions open while the refresh waits: {old:?}"
    );

    // Twenty slow revocations at once (more than the pool's connections)
    // while another tenant reads: no pool timeouts, no 5xx.
    let handles: Vec<_> = deletes
        .iter()
        .map(|c| {
            let http = app.http.clone();
            let url = format!("{}/api/v1/connections/{c}", app.api);
            let token = app.token("carol");
            tokio::spawn(async move {
                http.delete(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    wait_for(
        "the revocations to be under way",
        Duration::from_secs(20),
        || async {
            let leased: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM provider_connections WHERE token_lease_holder IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if leased >= 8 { Ok(()) } else { Err(leased) }
        },
    )
    .await;
    let old = old_transactions(&pool, Duration::from_millis(500)).await;
    assert!(
        old.is_empty(),
        "transactions open while revocations wait: {old:?}"
    );
    for _ in 0..10 {
        let resp = app.get("bob", "/api/v1/connections").await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), 204);
    }
    app.sandbox.set_faults(Faults::default());
    assert_eq!(
        app.wait_job("alice", job["id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    assert_eq!(
        app.wait_job("alice", refresh["id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    app.stop().await;
}

fn idempotent_post(app: &TestApp, path: &str, key: &str, body: Value) -> reqwest::RequestBuilder {
    app.http
        .post(format!("{}{path}", app.api))
        .bearer_auth(app.token("alice"))
        .header("idempotency-key", key)
        .json(&body)
}

/// A client that times out and retries with the same key gets the first
/// request's answer: the slow exchange finished and was stored even though
/// its client left, the key was not jammed, the one-time token was spent
/// once. Before: the key stayed "in progress" for a day and nothing was
/// stored.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_client_that_gives_up_does_not_jam_its_idempotency_key(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &[Role::Api], test_config()).await;
    let public_token = app.public_token(1, 5).await;
    app.sandbox.set_faults(Faults {
        auth_latency_ms: 1500,
        ..Faults::default()
    });
    let body = json!({ "provider": "plaid", "public_token": public_token });
    let gave_up = idempotent_post(&app, "/api/v1/connections", "link-1", body.clone())
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client was meant to time out");
    let created: Value = wait_for(
        "the retry to get the answer",
        Duration::from_secs(20),
        || async {
            let resp = idempotent_post(&app, "/api/v1/connections", "link-1", body.clone())
                .send()
                .await
                .unwrap();
            match resp.status().as_u16() {
                201 => {
                    assert_eq!(resp.headers()["idempotent-replayed"], "true");
                    Ok(resp.json::<Value>().await.unwrap())
                }
                409 => {
                    assert!(resp.headers().contains_key("retry-after"));
                    Err("in progress".to_owned())
                }
                other => panic!("unexpected {other}: {}", resp.text().await.unwrap()),
            }
        },
    )
    .await;
    assert_eq!(created["status"], "active");
    assert_eq!(
        app.count("SELECT count(*) FROM provider_connections").await,
        1
    );
    assert_eq!(app.sandbox.stats().exchange_calls, 1);
    app.stop().await;
}

/// A replayed error is the original problem, marked as a replay, whatever
/// the case of the `Bearer` scheme. Before: a replayed 404 said "no route
/// for …" without the header, and `BEARER` skipped the key altogether.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn replayed_errors_are_the_original_problem(pool: PgPool) {
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let path = format!("/api/v1/connections/{}/syncs", uuid::Uuid::now_v7());
    let send = |scheme: &'static str| {
        app.http
            .post(format!("{}{path}", app.api))
            .header("authorization", format!("{scheme} {}", app.token("alice")))
            .header("idempotency-key", "k-404")
            .send()
    };
    let first = send("Bearer").await.unwrap();
    assert_eq!(first.status(), 404);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let again = send(scheme).await.unwrap();
        assert_eq!(again.status(), 404, "{scheme}");
        assert_eq!(again.headers()["idempotent-replayed"], "true", "{scheme}");
        assert_eq!(again.headers()["content-type"], "application/problem+json");
        let again: Value = again.json().await.unwrap();
        assert_eq!(again, first, "{scheme}");
    }
    assert!(
        first["detail"].as_str().unwrap().contains("not found"),
        "{first}"
    );
    app.stop().await;
}

/// Methods nobody uses cannot grow the metrics registry: every label value
/// comes from a closed set. Before: each invented method was a new series.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn invented_methods_do_not_grow_the_metrics(pool: PgPool) {
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let invent = |from: usize| {
        let app = &app;
        async move {
            for i in from..from + 300 {
                let method = reqwest::Method::from_bytes(format!("XYZ{i}").as_bytes()).unwrap();
                let resp = app
                    .http
                    .request(method, format!("{}/healthz", app.api))
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_client_error());
            }
        }
    };
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("dashtam_http"))
            .count()
    };
    // A scrape of its own first: the scrapes are requests too.
    app.scrape().await;
    invent(0).await;
    let first = app.scrape().await;
    invent(300).await;
    let second = app.scrape().await;
    assert!(!second.contains("XYZ"), "an invented method became a label");
    // 300 more invented methods added no series: they all count as `other`.
    assert_eq!(series(&first), series(&second), "{second}");
    app.stop().await;
}

/// A client that sends its request head or body a trickle at a time is cut
/// off: the connection is closed, or the request answered 408.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn slow_clients_do_not_hold_connections(pool: PgPool) {
    let mut config = test_config();
    config.http.header_read_timeout_secs = 1.into();
    config.http.body_read_timeout_secs = 1.into();
    let app = spawn_app_with(pool, &[Role::Api], config).await;
    let addr = app.api.trim_start_matches("http://").to_owned();

    // Half a request head, then silence: the server hangs up.
    let mut head = std::net::TcpStream::connect(&addr).unwrap();
    head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let closed = tokio::task::spawn_blocking(move || {
        head.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 512];
        head.read(&mut buf)
    })
    .await
    .unwrap();
    if let Err(e) = &closed {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the server kept a half-sent request open: {e}"
        );
    }

    // A body that never arrives: 408.
    let token = app.token("alice");
    let mut body = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        body,
        "POST /api/v1/connections HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"provider\""
    )
    .unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        body.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        let n = body.read(&mut buf).unwrap();
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        text
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    app.stop().await;
}

/// A client's `X-Request-Id` is not taken as ours (it could be anyone's):
/// the response and the audit trail carry the server's own id. (A trusted
/// proxy's is kept: `metrics::log_lines_carry_request_and_job_context`.)
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_client_request_id_is_not_the_audit_correlation_id(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &[Role::Api], test_config()).await;
    let public_token = app.public_token(1, 1).await;
    let resp = app
        .http
        .post(format!("{}/api/v1/connections", app.api))
        .bearer_auth(app.token("alice"))
        .header("x-request-id", "someone-elses-id")
        .json(&json!({ "provider": "plaid", "public_token": public_token }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let ours = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(ours, "someone-elses-id");
    let correlation: String = sqlx::query_scalar(
        "SELECT correlation_id FROM audit_records WHERE action = 'connection_created'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(correlation, ours);
    app.stop().await;
}

/// Dates Postgres cannot store are the client's mistake: a 400 naming the
/// field, in parameters and in crafted cursors. Before: 500s.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn out_of_range_dates_are_refused_with_400(pool: PgPool) {
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("-5000-01-01|{}", uuid::Uuid::now_v7()));
    for (path, field) in [
        ("/api/v1/transactions?from=-5000-01-01".to_owned(), "from"),
        ("/api/v1/transactions?to=%2B10000-01-01".to_owned(), "to"),
        (format!("/api/v1/transactions?cursor={cursor}"), "cursor"),
    ] {
        let resp = app.get("alice", &path).await;
        assert_eq!(resp.status(), 400, "{path}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{path}: {problem}");
    }
    let resp = app
        .http
        .get(format!(
            "{}/api/v1/scheduler/cycles?cursor=-5000-01-01T00:00:00Z/prune",
            app.api
        ))
        .bearer_auth(app.operator_token("ops"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    app.stop().await;
}

/// An audit record is dated when its event happens, not when its
/// transaction began.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn audit_records_are_dated_when_they_happen(pool: PgPool) {
    let mut tx = pool.begin().await.unwrap();
    for action in ["first", "second"] {
        sqlx::query(
            "INSERT INTO audit_records (action, phase, outcome, actor, resource_type, resource_id)
             VALUES ($1, 'attempt', 'attempted', 'test', 'test', 'x')",
        )
        .bind(action)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query("SELECT pg_sleep(0.01)")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT created_at) FROM audit_records")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(distinct, 2);
}

/// An operator retrying a dead job whose unique key a newer job holds gets
/// a 409 naming that job. Before: a 500 (unique violation).
#[sqlx::test(migrator = "MIGRATIONS")]
async fn retrying_a_dead_job_whose_key_is_taken_is_409(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &[Role::Api], test_config()).await;
    let conn = app.connect("alice", 1, 1).await;
    let dead: Value = app.enqueue_sync("alice", &conn).await.json().await.unwrap();
    let dead = dead["id"].as_str().unwrap().to_owned();
    let dead_id: uuid::Uuid = dead.parse().unwrap();
    force_finish(&pool, "failed", Some(&[dead_id])).await;
    let newer: Value = app.enqueue_sync("alice", &conn).await.json().await.unwrap();
    let resp = app
        .post_as(
            &app.operator_token("ops"),
            &format!("/api/v1/admin/jobs/{dead}/retry"),
        )
        .await;
    assert_eq!(resp.status(), 409);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains(newer["id"].as_str().unwrap()),
        "{problem}"
    );
    app.stop().await;
}

/// Postgres restarting costs API clients nothing but latency (the broken
/// pooled connections are found and dropped, the read is run again);
/// while it is down, the API answers 503 with `Retry-After`, and `/readyz`
/// says why. Before: a 500 per pooled connection, and 500s while down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_is_503_and_a_restart_costs_reads_nothing() {
    let pg = PrivatePg::start_new();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&pg.url("postgres"))
        .await
        .unwrap();
    MIGRATIONS.run(&pool).await.unwrap();
    let mut config = test_config();
    config.database.acquire_timeout_secs = 2.into();
    let app = spawn_app_on(&pg.url("postgres"), &[Role::Api], config).await;
    let conn = app.connect("alice", 1, 3).await;
    // Warm every pooled connection.
    let path = format!("/api/v1/connections/{conn}");
    let reads: Vec<_> = (0..16)
        .map(|_| {
            let req = app
                .http
                .get(format!("{}{path}", app.api))
                .bearer_auth(app.token("alice"));
            tokio::spawn(async move { req.send().await.unwrap().status() })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap(), 200);
    }
    // As the field does it: a crash, not a clean stop.
    pg.crash();
    pg.start();
    for _ in 0..16 {
        let resp = app
            .get("alice", &format!("/api/v1/connections/{conn}"))
            .await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    pg.crash();
    let resp = app.get("alice", "/api/v1/connections").await;
    assert_eq!(resp.status(), 503, "{}", resp.text().await.unwrap());
    assert!(resp.headers().contains_key("retry-after"));
    let ready = app
        .http
        .get(format!("{}/readyz", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let why: Value = ready.json().await.unwrap();
    assert!(
        why["detail"].as_str().unwrap().contains("database"),
        "{why}"
    );
    pg.start();
    wait_for("reads to work again", Duration::from_secs(30), || async {
        let resp = app.get("alice", "/api/v1/connections").await;
        if resp.status() == 200 {
            Ok(())
        } else {
            Err(resp.status())
        }
    })
    .await;
    app.stop().await;
}

/// SIGTERM ends open job-event streams with a final `shutdown` event, and
/// the daemon exits. Before: a stream kept the daemon up until its job
/// ended.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn sigterm_ends_open_event_streams(pool: PgPool) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sandbox = dashtam_sandbox::Sandbox::new(dashtam_sandbox::SandboxConfig::default());
    let sandbox_url = serve_sandbox(&sandbox, &shutdown).await;
    let daemon = DaemonProcess::start(&crate::cli::url_of(&pool), &sandbox_url, "warn").await;
    let http = reqwest::Client::new();
    let operator = daemon.operator_token("ops");
    let paused = http
        .post(format!("{}/api/v1/admin/queues/sync/pause", daemon.api))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert!(paused.status().is_success());
    let token = daemon.token("alice");
    let conn = daemon.connect(&token, &sandbox_url).await;
    let job: Value = http
        .post(format!("{}/api/v1/connections/{conn}/syncs", daemon.api))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut stream = http
        .get(format!(
            "{}/api/v1/jobs/{}/events",
            daemon.api,
            job["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: job"));
    let stopped = tokio::task::spawn_blocking(move || daemon.terminate());
    let mut rest = String::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(rest.contains("event: shutdown"), "{rest}");
    stopped.await.unwrap();
    shutdown.cancel();
}

/// A grant the provider gave but we could not store is given back: the
/// provider's item is removed, not left live and unknown to us.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_grant_we_could_not_store_is_revoked(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), &[Role::Api], test_config()).await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON provider_connections
           FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let public_token = app.public_token(1, 1).await;
    let resp = app
        .http
        .post(format!("{}/api/v1/connections", app.api))
        .bearer_auth(app.token("alice"))
        .json(&json!({ "provider": "plaid", "public_token": public_token }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(app.sandbox.stats().exchange_calls, 1);
    assert!(
        app.sandbox.access_tokens().is_empty(),
        "the exchanged item is still live at the provider"
    );
    app.stop().await;
}
