//! Plaid webhooks, end to end: the daemon registers its endpoint on each
//! new connection, the sandbox signs and sends webhooks as Plaid does, and
//! the daemon verifies them before acting. Forged, altered, stale and
//! replayed webhooks change nothing.

use std::time::Duration;

use dashtam::app::Role;
use dashtam_sandbox::{Advance, Sandbox, SandboxConfig};
use dashtam_testkit::wait_for;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{OWN_WEBHOOK, TestApp, sample, spawn_app_with, test_config};

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

async fn app(pool: PgPool) -> TestApp {
    let mut config = test_config();
    config.providers.plaid.webhook_url = Some(OWN_WEBHOOK.into());
    spawn_app_with(pool, &[Role::Api, Role::Worker], config).await
}

impl TestApp {
    /// A Plaid call to the sandbox with the configured keys.
    async fn plaid(&self, path: &str, body: Value) -> Value {
        let config = self.sandbox.config();
        let resp = self
            .http
            .post(format!("{}{path}", self.sandbox_url))
            .header("PLAID-CLIENT-ID", config.client_id)
            .header("PLAID-SECRET", config.secret)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// Waits until the sandbox has delivered `n` webhooks in all.
    async fn delivered(&self, n: u64) {
        wait_for(
            "webhooks to be delivered",
            Duration::from_secs(30),
            || async {
                let stats = self.sandbox.stats();
                if stats.webhooks_delivered >= n {
                    Ok(())
                } else {
                    Err((stats.webhooks_delivered, stats.webhooks_failed))
                }
            },
        )
        .await
    }

    async fn sync_jobs(&self, connection: &str) -> Vec<Value> {
        sqlx::query_scalar::<_, Value>(
            "SELECT jsonb_build_object('id', id, 'state', state, 'started_at', started_at, \
             'finished_at', finished_at, 'key', unique_key) FROM jobs_all \
             WHERE kind = 'sync' AND payload->>'connection_id' = $1 ORDER BY created_at",
        )
        .bind(connection)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    async fn connection_status(&self, user: &str, id: &str) -> Value {
        self.get(user, &format!("/api/v1/connections/{id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Posts a webhook body with the given `Plaid-Verification` value.
    async fn post_webhook(&self, body: &[u8], jwt: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/api/v1/webhooks/plaid", self.api))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(j) = jwt {
            req = req.header("plaid-verification", j);
        }
        req.send().await.unwrap()
    }
}

/// Linking registers the daemon's webhook on the item; a
/// `SYNC_UPDATES_AVAILABLE` webhook starts a sync; a burst of them gives
/// one pending sync plus at most one follow-up behind a running one, the
/// two never overlap, and every transaction arrives once.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_webhook_starts_a_sync_and_a_burst_coalesces(pool: PgPool) {
    let app = app(pool).await;
    let conn = app.connect("alice", 2, 300).await;
    let token = app.only_item();
    let item = app
        .plaid("/item/get", json!({ "access_token": token }))
        .await;
    assert_eq!(
        item["item"]["webhook"],
        app.config()
            .providers
            .plaid
            .webhook_url
            .clone()
            .unwrap()
            .as_str(),
        "the daemon registers its endpoint on the new item"
    );
    assert!(app.sync_jobs(&conn).await.is_empty());

    // Plaid's sandbox trigger: one webhook, one sync.
    app.plaid(
        "/sandbox/item/fire_webhook",
        json!({ "access_token": token, "webhook_code": "SYNC_UPDATES_AVAILABLE" }),
    )
    .await;
    let first = wait_for(
        "a sync from the webhook",
        Duration::from_secs(30),
        || async {
            match app.sync_jobs(&conn).await.as_slice() {
                [job] if job["state"] == "succeeded" => Ok(job.clone()),
                other => Err(other.to_vec()),
            }
        },
    )
    .await;
    assert_eq!(first["key"], format!("sync:{conn}"));
    // Balances of every account come from /accounts/get.
    assert!(app.sandbox.stats().accounts_get_calls >= 1);
    let accounts: Value = app
        .get("alice", &format!("/api/v1/accounts?connection_id={conn}"))
        .await
        .json()
        .await
        .unwrap();
    let accounts = accounts["data"].as_array().unwrap();
    assert_eq!(accounts.len(), 2);
    assert!(
        accounts.iter().all(|a| !a["balance_current"].is_null()),
        "{accounts:?}"
    );

    // The data changes (the sandbox tells the item), then a burst of ten
    // more webhooks arrives while syncs are pending or running.
    app.sandbox.advance(
        &token,
        Advance {
            post_pending: true,
            modify: 3,
            remove: 2,
            add: 20,
        },
    );
    for _ in 0..10 {
        app.plaid(
            "/sandbox/item/fire_webhook",
            json!({ "access_token": token, "webhook_code": "SYNC_UPDATES_AVAILABLE" }),
        )
        .await;
    }
    app.delivered(12).await;
    let jobs = wait_for(
        "the burst's syncs to finish",
        Duration::from_secs(60),
        || async {
            let jobs = app.sync_jobs(&conn).await;
            if jobs.iter().all(|j| j["state"] == "succeeded") {
                Ok(jobs)
            } else {
                Err(jobs)
            }
        },
    )
    .await;
    // Eleven webhooks after the first sync: one sync, plus at most one
    // queued behind it while it ran.
    assert!(
        (2..=3).contains(&jobs.len()),
        "eleven webhooks should coalesce into one or two syncs: {jobs:#?}"
    );
    for pair in jobs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            b["started_at"].as_str() >= a["finished_at"].as_str(),
            "two syncs of one connection overlapped: {a} {b}"
        );
    }
    let truth = app.sandbox.ground_truth();
    let stored = app
        .count(&format!(
            "SELECT count(*) FROM transactions t JOIN accounts a ON a.id = t.account_id \
             WHERE a.connection_id = '{conn}' AND t.removed_at IS NULL"
        ))
        .await;
    assert_eq!(stored, truth.len() as i64);
    let scrape = app.scrape().await;
    assert!(
        sample(
            &scrape,
            r#"dashtam_webhooks_total{kind="sync_updates_available",provider="plaid",result="coalesced"}"#
        ) >= 1.0
    );
}

/// `ITEM` webhooks move the connection: login required, repaired,
/// expiring (warned), and revoked by the user (tokens wiped), each with an
/// audit record by the provider.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn item_webhooks_change_the_connection(pool: PgPool) {
    let app = app(pool).await;
    let conn = app.connect("alice", 1, 10).await;
    let token = app.only_item();
    let status = |expected: &'static str| {
        let app = &app;
        let conn = conn.clone();
        async move {
            wait_for(expected, Duration::from_secs(30), || async {
                let c = app.connection_status("alice", &conn).await;
                if c["status"] == expected {
                    Ok(c)
                } else {
                    Err(c)
                }
            })
            .await
        }
    };

    app.plaid(
        "/sandbox/item/reset_login",
        json!({ "access_token": token }),
    )
    .await;
    status("reauth_required").await;
    app.plaid(
        "/sandbox/item/fire_webhook",
        json!({ "access_token": token, "webhook_type": "ITEM", "webhook_code": "LOGIN_REPAIRED" }),
    )
    .await;
    status("active").await;
    app.control(
        &format!("items/{token}/webhook"),
        json!({ "webhook_type": "ITEM", "webhook_code": "PENDING_EXPIRATION" }),
    )
    .await;
    wait_for("the re-auth warning", Duration::from_secs(30), || async {
        let c = app.connection_status("alice", &conn).await;
        if c["reauth_warned_at"].is_string() {
            Ok(())
        } else {
            Err(c)
        }
    })
    .await;
    app.plaid(
        "/sandbox/item/fire_webhook",
        json!({ "access_token": token, "webhook_type": "ITEM", "webhook_code": "USER_PERMISSION_REVOKED" }),
    )
    .await;
    status("revoked").await;
    let wiped = app
        .count(&format!(
            "SELECT count(*) FROM provider_connections WHERE id = '{conn}' AND credentials IS NULL"
        ))
        .await;
    assert_eq!(wiped, 1, "a revoked connection keeps no tokens");
    let audited = app
        .count(&format!(
            "SELECT count(*) FROM audit_records WHERE actor = 'provider:plaid' AND resource_id = '{conn}' \
             AND action IN ('reauth_required', 'connection_repaired', 'reauth_warning', 'connection_revoked')"
        ))
        .await;
    assert_eq!(audited, 4);
    // A revoked connection does not sync on news.
    app.plaid(
        "/sandbox/item/fire_webhook",
        json!({ "access_token": token, "webhook_code": "SYNC_UPDATES_AVAILABLE" }),
    )
    .await;
    app.delivered(5).await;
    assert!(app.sync_jobs(&conn).await.is_empty());
}

/// A webhook with no signature, signed by a key Plaid never issued, with a
/// body changed after signing, signed too long ago, or signed with another
/// algorithm gets a 401; the same signed webhook twice gets a 409 the
/// second time. None of them enqueues anything.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn forged_altered_stale_and_replayed_webhooks_change_nothing(pool: PgPool) {
    let app = app(pool).await;
    let conn = app.connect("alice", 1, 10).await;
    let token = app.only_item();
    let item = app
        .plaid("/item/get", json!({ "access_token": token }))
        .await["item"]["item_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = serde_json::to_vec(&json!({
        "webhook_type": "TRANSACTIONS", "webhook_code": "SYNC_UPDATES_AVAILABLE",
        "item_id": item, "initial_update_complete": true,
        "historical_update_complete": true, "environment": "sandbox",
    }))
    .unwrap();
    let now = Duration::ZERO;

    let refused = |resp: reqwest::Response, status: u16| async move {
        assert_eq!(resp.status(), status);
        let problem: Value = resp.json().await.unwrap();
        assert!(
            problem["type"].as_str().unwrap().contains("webhook"),
            "{problem}"
        );
    };
    // No signature.
    refused(app.post_webhook(&body, None).await, 401).await;
    // Garbage, and a JWT with another algorithm.
    refused(app.post_webhook(&body, Some("not.a.jwt")).await, 401).await;
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "iat": chrono::Utc::now().timestamp(), "request_body_sha256": "00" }),
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    refused(app.post_webhook(&body, Some(&hs256)).await, 401).await;
    // Signed by another party's key (its kid is unknown to Plaid).
    let forger = Sandbox::new(SandboxConfig::default());
    let forged = forger.sign_webhook(&body, now);
    refused(app.post_webhook(&body, Some(&forged)).await, 401).await;
    // A genuine signature over another body.
    let genuine = app.sandbox.sign_webhook(b"{}", now);
    refused(app.post_webhook(&body, Some(&genuine)).await, 401).await;
    // Signed six minutes ago.
    let stale = app.sandbox.sign_webhook(&body, Duration::from_secs(360));
    refused(app.post_webhook(&body, Some(&stale)).await, 401).await;
    assert!(
        app.sync_jobs(&conn).await.is_empty(),
        "a refused webhook enqueued a sync"
    );

    // The real thing works once; its replay is refused.
    let signed = app.sandbox.sign_webhook(&body, now);
    let ok = app.post_webhook(&body, Some(&signed)).await;
    assert_eq!(ok.status(), 200);
    let ack: Value = ok.json().await.unwrap();
    assert_eq!(ack["result"], "applied");
    refused(app.post_webhook(&body, Some(&signed)).await, 409).await;
    assert_eq!(app.sync_jobs(&conn).await.len(), 1);

    // A forger naming a new key on every request cannot make each one cost
    // a call to Plaid: past a few fetches a minute, unknown keys get a 503.
    let fetched = app.sandbox.stats().verification_key_calls;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let forger = Sandbox::new(SandboxConfig::default());
        let jwt = forger.sign_webhook(&body, now);
        statuses.push(app.post_webhook(&body, Some(&jwt)).await.status().as_u16());
    }
    let calls = app.sandbox.stats().verification_key_calls - fetched;
    assert!(calls <= 6, "{calls} key fetches for 10 forged webhooks");
    assert!(
        statuses.iter().all(|s| [401, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "{statuses:?}");
    assert_eq!(app.sync_jobs(&conn).await.len(), 1);

    let scrape = app.scrape().await;
    for result in ["unsigned", "forged", "stale"] {
        assert!(
            sample(
                &scrape,
                &format!(
                    r#"dashtam_webhooks_total{{kind="none",provider="plaid",result="{result}"}}"#
                )
            ) >= 1.0,
            "{result} not counted"
        );
    }
}
