//! The scheduler: sweeps that enqueue once per tick, and a cluster of real
//! daemons that processes every tick exactly once across a leader's death.

use dashtam_testkit::wait_for;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashtam::app::Role;
use dashtam_scheduler::{Cycle, Scheduler, TickOutcome};
use dashtam_store::{Cipher, Store};
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::PgPool;

use crate::cli::url_of;
use crate::helpers::{TestApp, force_finish, spawn_app_with, test_config};

fn scheduler(app: &TestApp) -> Scheduler {
    let store = Store::new(app.pool.clone(), Arc::new(Cipher::ephemeral().unwrap()));
    let mut settings = app.config().scheduler_settings("test-scheduler".into());
    settings.sync_spread = Duration::from_secs(60);
    Scheduler::new(store, settings)
}

async fn set(app: &TestApp, id: &str, column: &str, value: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE provider_connections SET {column} = {value} WHERE id = '{id}'"
    )))
    .execute(&app.pool)
    .await
    .unwrap();
}

fn tick(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_refresh_sweep_enqueues_due_connections_once_and_flags_expiring_grants(pool: PgPool) {
    // API only: nothing consumes the jobs the sweep enqueues.
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let (due, _) = app.connect_schwab("alice", 1, 1).await;
    let (fresh, _) = app.connect_schwab("alice", 1, 1).await;
    let (expiring, _) = app.connect_schwab("bob", 1, 1).await;
    let plaid = app.connect("bob", 1, 1).await;
    set(
        &app,
        &due,
        "access_token_expires_at",
        "now() + interval '1 minute'",
    )
    .await;
    set(
        &app,
        &expiring,
        "refresh_token_expires_at",
        "now() + interval '1 day'",
    )
    .await;
    set(&app, &plaid, "access_token_expires_at", "NULL").await;
    let s = scheduler(&app);

    let t1 = tick("2026-11-23T10:00:00Z");
    let first = s.process(Cycle::TokenRefresh, t1, 1).await.unwrap();
    assert_eq!(
        first,
        Some(TickOutcome {
            enqueued: 1,
            flagged: 1
        })
    );
    // The same tick again (a second leader, a retry): nothing happens.
    assert_eq!(s.process(Cycle::TokenRefresh, t1, 2).await.unwrap(), None);
    // The next tick: the refresh is still pending, the grant already flagged.
    let t2 = tick("2026-11-23T10:01:00Z");
    assert_eq!(
        s.process(Cycle::TokenRefresh, t2, 1).await.unwrap(),
        Some(TickOutcome::default())
    );
    let jobs: Vec<(String, Value)> =
        sqlx::query_as("SELECT kind, payload FROM jobs_all ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].0, "token_refresh");
    assert_eq!(jobs[0].1["connection_id"], due.as_str());

    let conn: Value = app
        .get("bob", &format!("/api/v1/connections/{expiring}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(conn["reauth_warned_at"].is_string(), "{conn}");
    let other: Value = app
        .get("alice", &format!("/api/v1/connections/{fresh}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(other["reauth_warned_at"].is_null());
    assert_eq!(
        app.count("SELECT count(*) FROM audit_records WHERE action = 'reauth_warning'")
            .await,
        1
    );

    // Operators see the cycle's runs; clients may not.
    let resp = app
        .http
        .get(format!(
            "{}/api/v1/scheduler/cycles?cycle=token_refresh&limit=1",
            app.api
        ))
        .bearer_auth(app.operator_token("ops"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["data"][0]["tick"], "2026-11-23T10:01:00Z");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let resp = app
        .http
        .get(format!("{}/api/v1/scheduler/cycles", app.api))
        .query(&[("cursor", cursor.as_str())])
        .bearer_auth(app.operator_token("ops"))
        .send()
        .await
        .unwrap();
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["data"][0]["tick"], "2026-11-23T10:00:00Z");
    assert_eq!(page["data"][0]["enqueued"], 1);
    assert_eq!(page["data"][0]["flagged"], 1);
    assert!(page["data"][0]["finished_at"].is_string());
    assert!(page["next_cursor"].is_null());
    assert_eq!(
        app.get("alice", "/api/v1/scheduler/cycles").await.status(),
        403
    );
    let bad = app
        .http
        .get(format!("{}/api/v1/scheduler/cycles?cursor=nope", app.api))
        .bearer_auth(app.operator_token("ops"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_stale_sync_sweep_spreads_due_syncs_and_skips_pending_ones(pool: PgPool) {
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(app.connect("carol", 1, 1).await);
    }
    // One was synced a minute ago (not due); one already has a sync pending.
    set(&app, &ids[0], "last_sync_at", "now() - interval '1 minute'").await;
    assert_eq!(app.enqueue_sync("carol", &ids[1]).await.status(), 202);
    let s = scheduler(&app);
    let outcome = s
        .process(Cycle::StaleSync, tick("2026-11-23T10:05:30Z"), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.enqueued, 2);
    let swept: Vec<(f64, Option<String>)> = sqlx::query_as(
        "SELECT extract(epoch FROM run_at - created_at)::float8, owner FROM jobs_all \
         WHERE kind = 'sync' AND payload->>'connection_id' <> $1",
    )
    .bind(&ids[1])
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(swept.len(), 2);
    // The user the syncs are for sees them in the API.
    assert!(
        swept
            .iter()
            .all(|(_, owner)| owner.as_deref() == Some("carol"))
    );
    let delays: Vec<f64> = swept.iter().map(|(d, _)| *d).collect();
    assert!(
        delays.iter().all(|d| (-1.0..=61.0).contains(d)),
        "{delays:?}"
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_stale_sync_sweep_takes_a_large_tenant_in_turns(pool: PgPool) {
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let mut big = Vec::new();
    for _ in 0..5 {
        big.push(app.connect("dave", 1, 1).await);
    }
    let small = app.connect("erin", 1, 1).await;
    // dave's connections were last synced one after another; the oldest
    // come first.
    for (i, id) in big.iter().enumerate() {
        let at = format!("now() - interval '1 day' + interval '{i} minutes'");
        set(&app, id, "last_sync_at", &at).await;
    }
    let mut settings = app.config().scheduler_settings("test-scheduler".into());
    settings.syncs_per_user = 2;
    let s = Scheduler::new(
        Store::new(app.pool.clone(), Arc::new(Cipher::ephemeral().unwrap())),
        settings,
    );
    let swept = || async {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT owner, payload->>'connection_id' FROM jobs_all WHERE kind = 'sync' ORDER BY 2",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        rows
    };
    let first = s
        .process(Cycle::StaleSync, tick("2026-11-23T10:05:30Z"), 1)
        .await
        .unwrap()
        .unwrap();
    // Two of dave's five, the two synced longest ago; erin is not held up.
    assert_eq!(first.enqueued, 3);
    let mut expected = vec![
        ("dave".to_owned(), big[0].clone()),
        ("dave".to_owned(), big[1].clone()),
        ("erin".to_owned(), small.clone()),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(swept().await, expected);
    // Those two have synced by the next tick: the next two are taken.
    for id in &big[..2] {
        set(&app, id, "last_sync_at", "now()").await;
    }
    force_finish(&app.pool, "succeeded", None).await;
    let second = s
        .process(Cycle::StaleSync, tick("2026-11-23T10:10:30Z"), 1)
        .await
        .unwrap()
        .unwrap();
    // dave's next two, and erin's again (the jobs were marked done by hand,
    // so erin's connection still has no sync on record).
    assert_eq!(second.enqueued, 3);
    let pending: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'connection_id' FROM jobs_all \
         WHERE kind = 'sync' AND state <> 'succeeded' AND owner = 'dave' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut next = vec![big[2].clone(), big[3].clone()];
    next.sort();
    assert_eq!(pending, next);
    app.stop().await;
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three real scheduler daemons with a one-second cycle: the leader is
/// killed with SIGKILL; another takes over within the lease bound, catches
/// up, and every second's tick is processed exactly once.
#[sqlx::test(migrations = "../../migrations")]
async fn three_daemons_process_every_tick_exactly_once_across_a_leader_kill(pool: PgPool) {
    let url = url_of(&pool);
    let key = Cipher::generate_key().unwrap();
    let spawn = || {
        Daemon(
            Command::new(env!("CARGO_BIN_EXE_dashtam"))
                .args(["serve", "--role", "scheduler", "--listen", "127.0.0.1:0"])
                .args(["--database-url", &url])
                .env_remove("RUST_LOG")
                .env("DASHTAM__CRYPTO__ACTIVE_KEY", "k1")
                .env("DASHTAM__CRYPTO__KEYS__K1", key.expose_secret())
                .env("DASHTAM__SCHEDULER__LEASE_TTL_SECS", "3")
                .env("DASHTAM__SCHEDULER__RENEW_EVERY_MS", "500")
                .env("DASHTAM__SCHEDULER__CYCLES__TOKEN_REFRESH", "* * * * * *")
                .env("DASHTAM__SCHEDULER__CYCLES__STALE_SYNC", "")
                .env("DASHTAM__SCHEDULER__CYCLES__PRUNE", "")
                .env("DASHTAM__LOG__FILTER", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut daemons = vec![spawn(), spawn(), spawn()];
    let ticks = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM scheduler_ticks")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    wait_for("3 ticks", Duration::from_secs(30), || async {
        let n = ticks().await;
        if n >= 3 { Ok(()) } else { Err(n) }
    })
    .await;
    let holder: String = sqlx::query_scalar("SELECT holder FROM scheduler_leases")
        .fetch_one(&pool)
        .await
        .unwrap();
    let pid: u32 = holder.rsplit('-').next().unwrap().parse().unwrap();
    let leader = daemons
        .iter()
        .position(|d| d.0.id() == pid)
        .expect("leader is ours");
    let mut killed = daemons.remove(leader);
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let killed_at = Instant::now();
    wait_for(
        "another daemon to take over",
        Duration::from_secs(30),
        || async {
            let now: Option<String> = sqlx::query_scalar(
                "SELECT holder FROM scheduler_leases WHERE expires_at > now() AND holder <> $1",
            )
            .bind(&holder)
            .fetch_optional(&pool)
            .await
            .unwrap();
            now.ok_or("the dead leader's lease")
        },
    )
    .await;
    // A figure, not an assertion (lease TTL 3 s + renewal every 0.5 s).
    println!(
        "{}",
        serde_json::json!({ "scheduler_takeover_s": killed_at.elapsed().as_secs_f64() })
    );
    // Let the new leader catch up and run a few more ticks.
    let after = ticks().await;
    wait_for(
        "the new leader's ticks",
        Duration::from_secs(30),
        || async {
            let n = ticks().await;
            if n >= after + 3 { Ok(()) } else { Err(n) }
        },
    )
    .await;
    for d in &daemons {
        Command::new("kill")
            .args(["-TERM", &d.0.id().to_string()])
            .status()
            .unwrap();
    }
    for mut d in daemons.drain(..) {
        assert!(d.0.wait().unwrap().success());
    }

    let (first, last, count, leaders, unfinished): (DateTime<Utc>, DateTime<Utc>, i64, i64, i64) =
        sqlx::query_as(
            "SELECT min(tick), max(tick), count(*), count(DISTINCT leader), \
                    count(*) FILTER (WHERE finished_at IS NULL) \
             FROM scheduler_ticks WHERE cycle = 'token_refresh'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    let span = (last - first).num_seconds() + 1;
    assert_eq!(count, span, "every second from {first} to {last}, once");
    assert!(leaders >= 2, "ticks were processed by {leaders} leader(s)");
    assert_eq!(unfinished, 0);
    // The stopped leader gave its lease up.
    let live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scheduler_leases WHERE expires_at > now()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(live, 0);
}
