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

/// Spans as an OTLP receiver got them, flattened.
#[derive(Clone, Debug)]
struct ReceivedSpan {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: std::collections::HashMap<String, String>,
    start: u64,
    end: u64,
}

/// An OTLP/HTTP receiver on port 0 (protobuf, `POST /v1/traces`), as an
/// OpenTelemetry Collector would be; returns its base URL and what it got.
async fn otlp_receiver(
    shutdown: &tokio_util::sync::CancellationToken,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;

    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                let mut sink = sink.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            let attributes = s
                                .attributes
                                .iter()
                                .map(|kv| {
                                    let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                                        Some(Any::StringValue(s)) => s,
                                        Some(Any::IntValue(i)) => i.to_string(),
                                        Some(Any::BoolValue(b)) => b.to_string(),
                                        other => format!("{other:?}"),
                                    };
                                    (kv.key.clone(), v)
                                })
                                .collect();
                            sink.push(ReceivedSpan {
                                name: s.name,
                                trace_id: s.trace_id,
                                span_id: s.span_id,
                                parent_span_id: s.parent_span_id,
                                attributes,
                                start: s.start_time_unix_nano,
                                end: s.end_time_unix_nano,
                            });
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    (url, got)
}

/// With an OTLP endpoint configured, one trace follows a sync from the
/// API request that enqueued it, through its time in the queue and the
/// job's run, to each provider call and the commit: the job carries the
/// request's trace context in its row, so this holds across processes.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_trace_follows_a_sync_from_the_request_to_the_commit(pool: PgPool) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (collector, spans) = otlp_receiver(&shutdown).await;
    let sandbox = dashtam_sandbox::Sandbox::new(dashtam_sandbox::SandboxConfig::default());
    let sandbox_url = serve_sandbox(&sandbox, &shutdown).await;
    let daemon = DaemonProcess::start_with(
        &url_of(&pool),
        &sandbox_url,
        "info",
        &[("DASHTAM__TRACING__OTLP_ENDPOINT", &collector)],
    )
    .await;
    let token = daemon.token("alice");
    let conn = daemon.connect(&token, &sandbox_url).await;
    let job: serde_json::Value = serde_json::from_str(&daemon.sync(&token, &conn).await).unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    let traceparent: Option<String> =
        sqlx::query_scalar("SELECT trace_parent FROM jobs_all WHERE id = $1::uuid")
            .bind(&job_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        traceparent.as_deref().is_some_and(|t| t.starts_with("00-")),
        "the job row keeps its request's traceparent: {traceparent:?}"
    );
    // Shutting down sends what is still buffered.
    daemon.terminate();
    let spans = wait_for(
        "the job's spans",
        std::time::Duration::from_secs(30),
        || async {
            let spans = spans.lock().unwrap().clone();
            let job_span = spans
                .iter()
                .find(|s| s.name == "job sync" && s.attributes.get("job_id") == Some(&job_id))
                .cloned();
            match job_span {
                Some(j)
                    if spans
                        .iter()
                        .any(|s| s.name == "commit" && s.trace_id == j.trace_id) =>
                {
                    Ok((j, spans))
                }
                _ => Err(spans.iter().map(|s| s.name.clone()).collect::<Vec<_>>()),
            }
        },
    )
    .await;
    let (job_span, spans) = spans;
    let trace: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == job_span.trace_id)
        .collect();
    let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    let one = |name: &str| -> &ReceivedSpan {
        trace
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span in the trace: {names:?}"))
    };
    // The request that enqueued the job is the trace's root.
    let request = one("POST /api/v1/connections/{connection_id}/syncs");
    assert!(request.parent_span_id.is_empty(), "{names:?}");
    assert_eq!(
        request
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("202")
    );
    // The wait in the queue, then the run, both under the request's span
    // (or below it).
    let wait = one("queue.wait");
    assert!(
        wait.start <= wait.end && wait.end <= job_span.start + 1_000_000,
        "{wait:?} {job_span:?}"
    );
    assert!(!job_span.parent_span_id.is_empty());
    // Each page fetch is a call under the job; so is the commit.
    let under_job = |s: &ReceivedSpan| {
        let mut parent = s.parent_span_id.clone();
        while !parent.is_empty() {
            if parent == job_span.span_id {
                return true;
            }
            parent = trace
                .iter()
                .find(|p| p.span_id == parent)
                .map(|p| p.parent_span_id.clone())
                .unwrap_or_default();
        }
        false
    };
    let fetches: Vec<_> = trace
        .iter()
        .filter(|s| s.name == "plaid /transactions/sync")
        .collect();
    assert!(!fetches.is_empty(), "{names:?}");
    assert!(fetches.iter().all(|s| under_job(s)), "{names:?}");
    assert!(fetches.iter().all(|s| {
        s.attributes
            .get("http.response.status_code")
            .map(String::as_str)
            == Some("200")
    }));
    assert!(under_job(one("commit")), "{names:?}");
    shutdown.cancel();
}
