//! Protecting providers: a breaker that opens in an outage and snoozes the
//! provider's jobs without spending their attempts, and a 429 that pauses
//! the provider for every job.

use std::time::Duration;

use dashtam::app::Role;
use dashtam_domain::model::ProviderKind;
use dashtam_sandbox::Faults;
use dashtam_testkit::wait_for;
use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::{TestApp, spawn_app_with, test_config};

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

async fn app(pool: PgPool) -> TestApp {
    let mut config = test_config();
    config.breaker.min_calls = 5;
    config.breaker.cooldown_secs = 2.into();
    config.breaker.max_cooldown_secs = 4.into();
    config.breaker.probes = 2;
    config.sync.page_retries = 1;
    config.jobs.sync_max_attempts = 3;
    config.metrics.refresh_secs = 1.into();
    spawn_app_with(pool, &[Role::Api, Role::Worker], config).await
}

async fn enqueue_all(app: &TestApp, conns: &[String]) -> Vec<String> {
    let mut jobs = Vec::new();
    for c in conns {
        let job: Value = app.enqueue_sync("alice", c).await.json().await.unwrap();
        jobs.push(job["id"].as_str().unwrap().to_owned());
    }
    jobs
}

/// Every job ends succeeded on its first attempt, with no error recorded.
async fn assert_no_attempt_spent(app: &TestApp, jobs: &[String]) {
    for id in jobs {
        let job = app.wait_job("alice", id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["attempt"], 1, "an attempt was spent: {job}");
        assert_eq!(job["errors"].as_array().unwrap().len(), 0, "{job}");
    }
}

/// A provider outage opens the breaker: the provider's jobs wait
/// (`provider_unavailable`, with the time they will try again) without
/// spending attempts; probes close it when the provider is back, and every
/// job succeeds on its first attempt. Before: every due job burnt its
/// attempts and died. The first job of the outage runs alone until its
/// retries ran out, too few calls yet to open the breaker: it waits for the
/// verdict of the jobs that follow instead of spending its attempt (it used
/// to, whenever it ran ahead of the others).
#[sqlx::test(migrator = "MIGRATIONS")]
async fn an_outage_opens_the_breaker_and_costs_no_attempt(pool: PgPool) {
    let app = app(pool.clone()).await;
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(app.connect("alice", 1, 30).await);
    }
    app.sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let mut jobs = enqueue_all(&app, &conns[..1]).await;
    // Its first call and its one retry in place (page_retries = 1) failed.
    wait_for(
        "the first job's calls to fail",
        Duration::from_secs(30),
        || async {
            let faults = app.sandbox.stats().faults_injected;
            if faults >= 2 { Ok(()) } else { Err(faults) }
        },
    )
    .await;
    jobs.extend(enqueue_all(&app, &conns[1..]).await);
    let op = app.operator_token("ops");
    let providers: Value = wait_for("the breaker to open", Duration::from_secs(30), || async {
        let p = app.admin_entry(&op, "providers", "provider", "plaid").await;
        if p["breaker"] == "open" && p["snoozed_jobs"].as_i64() > Some(0) {
            Ok(p)
        } else {
            Err(p)
        }
    })
    .await;
    assert!(providers["probe_at"].is_string(), "{providers}");
    // A waiting job says why, and until when.
    let waiting = wait_for(
        "a job to say why it waits",
        Duration::from_secs(30),
        || async {
            for id in &jobs {
                let j: Value = app
                    .get("alice", &format!("/api/v1/jobs/{id}"))
                    .await
                    .json()
                    .await
                    .unwrap();
                if j["waiting"]["reason"] == "provider_unavailable" {
                    return Ok(j);
                }
            }
            Err("no job waiting")
        },
    )
    .await;
    assert!(waiting["waiting"]["until"].is_string(), "{waiting}");
    assert_eq!(waiting["errors"].as_array().unwrap().len(), 0, "{waiting}");
    // The provider comes back: probes close the breaker, everything runs.
    app.sandbox.set_faults(Faults::default());
    assert_no_attempt_spent(&app, &jobs).await;
    let transitions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_records WHERE resource_type = 'provider' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        transitions.first().map(String::as_str),
        Some("provider_breaker_opened")
    );
    assert_eq!(
        transitions.last().map(String::as_str),
        Some("provider_breaker_closed")
    );
    let metrics = app.scrape().await;
    assert!(
        metrics
            .contains(r#"dashtam_provider_breaker_transitions_total{provider="plaid",to="open"}"#),
        "{metrics}"
    );
    app.stop().await;
}

/// An outage at the token endpoint: syncs whose access tokens expired
/// cannot refresh, and their refreshes wait for the provider like any other
/// call instead of spending the syncs' attempts (`token_refresh_deferred`,
/// never `token_refresh_failed`). When Schwab is back, each connection
/// refreshes once and syncs, on its first attempt.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn an_outage_at_the_token_endpoint_costs_no_attempt(pool: PgPool) {
    let app = app(pool.clone()).await;
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(app.connect_schwab("alice", 1, 5).await.0);
    }
    sqlx::query("UPDATE provider_connections SET access_token_expires_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    app.sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let jobs = enqueue_all(&app, &conns).await;
    let op = app.operator_token("ops");
    wait_for("the breaker to open", Duration::from_secs(30), || async {
        let p = app
            .admin_entry(&op, "providers", "provider", "schwab")
            .await;
        if p["breaker"] == "open" {
            Ok(())
        } else {
            Err(p)
        }
    })
    .await;
    app.sandbox.set_faults(Faults::default());
    assert_no_attempt_spent(&app, &jobs).await;
    let audits = |action: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_records WHERE action = $1")
                .bind(action)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(audits("token_refresh_deferred").await > 0);
    assert_eq!(audits("token_refresh_failed").await, 0);
    assert_eq!(audits("token_refresh_succeeded").await, 6);
    app.stop().await;
}

/// A Schwab 429 with `Retry-After` pauses the provider for every job (they
/// wait, `provider_rate_limited`), and no job spends an attempt on it. The
/// sandbox sends the HTTP-date form here (the seconds form: the storm chaos
/// scenario and `sync::a_flaky_page_is_retried_in_place`).
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_429_pauses_the_provider_for_every_job(pool: PgPool) {
    let app = app(pool.clone()).await;
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(app.connect_schwab("alice", 1, 5).await.0);
    }
    app.sandbox.set_faults(Faults {
        rate_limit_rate: 1.0,
        retry_after_secs: 3,
        retry_after_http_date: true,
        ..Faults::default()
    });
    let jobs = enqueue_all(&app, &conns).await;
    wait_for(
        "the provider to be paused",
        Duration::from_secs(30),
        || async {
            let paused: Option<bool> = sqlx::query_scalar(
                "SELECT paused_until > now() FROM provider_health WHERE provider = 'schwab'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten();
            if paused == Some(true) {
                Ok(())
            } else {
                Err(paused)
            }
        },
    )
    .await;
    app.sandbox.set_faults(Faults::default());
    assert_no_attempt_spent(&app, &jobs).await;
    // Every daemon learnt of the pause (the jobs that were running waited
    // it out in place or were snoozed; none spent an attempt).
    let metrics = app.scrape().await;
    assert!(
        crate::helpers::sample(
            &metrics,
            r#"dashtam_provider_breaker_transitions_total{provider="schwab",to="paused"}"#
        ) >= 1.0,
        "{metrics}"
    );
    app.stop().await;
}

/// Plaid's 429 (no `Retry-After`: an Item's own limit, the per-client one
/// being kept by our budget) holds back only the call that got it: it
/// waits in place and goes on; Plaid is not paused for the other jobs and
/// no job spends an attempt. Before, it paused every Plaid job for 30 s.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_plaid_429_holds_back_only_its_connection(pool: PgPool) {
    let app = app(pool.clone()).await;
    let mut conns = Vec::new();
    for _ in 0..6 {
        conns.push(app.connect("alice", 1, 30).await);
    }
    app.sandbox
        .push_fault(dashtam_sandbox::ScriptedFault::RateLimited {
            retry_after_secs: 0,
            http_date: false,
        });
    let jobs = enqueue_all(&app, &conns).await;
    assert_no_attempt_spent(&app, &jobs).await;
    assert_eq!(app.sandbox.stats().faults_injected, 1);
    let paused: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT paused_until FROM provider_health WHERE provider = 'plaid'")
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten();
    assert_eq!(paused, None, "Plaid was paused for everyone");
    app.stop().await;
}

/// An app whose Plaid budget is 10 calls a second (a burst of 2), with
/// pages of 10 transactions so each sync makes several calls.
async fn budgeted(pool: PgPool, redis_url: Option<&str>) -> TestApp {
    let mut config = test_config();
    config.sync.page_size = 10;
    config.budgets.max_wait_ms = 300.into();
    let plaid = config
        .budgets
        .providers
        .get_mut(&ProviderKind::Plaid)
        .unwrap();
    plaid.requests_per_sec = 10.0;
    plaid.burst = 2;
    plaid.concurrency = 3;
    if let Some(url) = redis_url {
        config.rate_limit.redis_url = url.into();
    }
    spawn_app_with(pool, &[Role::Api, Role::Worker], config).await
}

/// Syncs `n` connections of 40 transactions (four pages and a last empty
/// one each) through `app`; every job succeeds on its first attempt and
/// the sandbox never saw more than the budget allows in any second.
async fn sync_within_budget(app: &TestApp, n: usize) {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(app.connect("alice", 1, 40).await);
    }
    let jobs = enqueue_all(app, &conns).await;
    assert_no_attempt_spent(app, &jobs).await;
    let stats = app.sandbox.stats();
    assert!(stats.transactions_sync_calls >= 4 * n as u64, "{stats:?}");
    // 10 a second plus the burst of 2, and a call of arrival jitter.
    let peak = stats.peak_sync_calls_per_second();
    assert!(peak <= 13, "the sandbox saw {peak} calls in one second");
}

/// The budget holds the provider to its rate: calls over it wait in place
/// (a short wait) or their job is snoozed (`provider_budget`), and no job
/// spends an attempt on it.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn the_budget_holds_the_provider_to_its_rate(pool: PgPool) {
    let app = budgeted(pool, None).await;
    // The counters are the process's: other tests in the same process
    // (`cargo test`) count too, so this test counts what changed.
    let before = app.scrape().await;
    sync_within_budget(&app, 12).await;
    let metrics = app.scrape().await;
    let decided = |d: &str| {
        let key = format!(
            r#"dashtam_provider_budget_decisions_total{{decision="{d}",provider="plaid"}}"#
        );
        crate::helpers::sample(&metrics, &key) - crate::helpers::sample(&before, &key)
    };
    assert!(decided("allowed") >= 2.0, "{metrics}");
    assert!(decided("waited") + decided("deferred") >= 1.0, "{metrics}");
    // Operators see the budget and how it is spent across the daemons; the
    // rate read from Redis shows this daemon spent it there, not failing
    // open (the process's `fail_open` count is no witness when tests share
    // the process: the Redis-less test counts there).
    let op = app.operator_token("ops");
    let plaid = app.admin_entry(&op, "providers", "provider", "plaid").await;
    assert_eq!(plaid["budget"]["requests_per_sec"], 10.0, "{plaid}");
    assert_eq!(plaid["budget"]["concurrency"], 3, "{plaid}");
    let rate = plaid["current_rate"].as_f64().unwrap();
    assert!(rate > 0.0 && rate <= 10.3, "{plaid}");
    assert!(plaid["in_flight"].as_u64().unwrap() <= 3, "{plaid}");
    app.stop().await;
}

/// Without Redis, each daemon spends its share of the budget (here the
/// whole budget: it is the only worker): still held to the rate, never
/// unlimited and never stopped; counted as `fail_open`.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn without_redis_each_daemon_spends_its_share(pool: PgPool) {
    let port = dashtam_testkit::free_port();
    let app = budgeted(pool, Some(&format!("redis://127.0.0.1:{port}"))).await;
    sync_within_budget(&app, 8).await;
    let metrics = app.scrape().await;
    assert!(
        crate::helpers::sample(
            &metrics,
            r#"dashtam_provider_budget_decisions_total{decision="fail_open",provider="plaid"}"#
        ) >= 8.0,
        "{metrics}"
    );
    app.stop().await;
}
