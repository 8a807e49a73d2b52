//! The token lifecycle against the OAuth (Schwab-style) sandbox: connect,
//! sync by date window, expiry, single-flight refresh, rotation, dead
//! refresh tokens, revocation, key rotation, and secrets that never leak.

use dashtam_testkit::wait_for;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashtam_domain::jobs::TokenRefreshJob;
use dashtam_domain::model::ProviderKind;
use dashtam_domain::ports::{LiveSecret, ProviderCredentials, WindowSyncSource};
use dashtam_domain::{ConnectionId, UserId};
use dashtam_providers::{SchwabClient, SchwabConfig};
use dashtam_queue::{JobState, NewJob, Queue};
use dashtam_sandbox::{ExpiredRefresh, Faults, OAuthSettings, Rotation, Sandbox, SandboxConfig};
use dashtam_store::connections::NewConnection;
use dashtam_store::{Cipher, Store};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cli::url_of;
use crate::crash::spawn_worker_with;
use crate::helpers::{
    DaemonProcess, TestApp, authorization_code, serve_sandbox, spawn_app, test_config,
};

async fn connection(app: &TestApp, user: &str, id: &str) -> Value {
    app.get(user, &format!("/api/v1/connections/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// Our record says the access token expires now (the provider's copy is
/// still good): the next sync refreshes before it starts.
async fn expiring_now(app: &TestApp, id: &str) {
    sqlx::query(
        "UPDATE provider_connections SET access_token_expires_at = now() WHERE id = $1::uuid",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

async fn transactions(app: &TestApp, connection: &str) -> i64 {
    app.count(&format!(
        "SELECT count(*) FROM transactions t JOIN accounts a ON a.id = t.account_id \
         WHERE a.connection_id = '{connection}'"
    ))
    .await
}

async fn audits(app: &TestApp, action: &str) -> i64 {
    app.count(&format!(
        "SELECT count(*) FROM audit_records WHERE action = '{action}'"
    ))
    .await
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_oauth_connection_syncs_refreshes_when_its_token_expires_and_syncs_again(pool: PgPool) {
    let app = spawn_app(pool).await;
    let before = Utc::now();
    let (id, grant) = app.connect_schwab("alice", 2, 40).await;
    let conn = connection(&app, "alice", &id).await;
    assert_eq!(conn["status"], "active");
    let access = time(&conn["access_token_expires_at"]);
    assert!(access > before + chrono::Duration::minutes(29), "{conn}");
    let refresh = time(&conn["refresh_token_expires_at"]);
    assert!(refresh > before + chrono::Duration::days(6), "{conn}");
    assert!(
        !conn.to_string().contains("R0."),
        "no token material: {conn}"
    );

    let job = app.sync("alice", &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(transactions(&app, &id).await, 80);
    let accounts: Value = app
        .get("alice", "/api/v1/accounts")
        .await
        .json()
        .await
        .unwrap();
    let accounts = accounts["data"].as_array().unwrap();
    assert_eq!(accounts.len(), 2);
    assert!(
        accounts
            .iter()
            .all(|a| a["mask"].as_str().unwrap().len() == 4)
    );

    // The provider expires the access token and new activity arrives: the
    // next sync meets a 401, refreshes once, and continues. The overlapping
    // window re-reads old activity without duplicating it.
    app.control(&format!("oauth/grants/{grant}/expire"), json!({}))
        .await;
    app.control(
        &format!("oauth/grants/{grant}/advance"),
        json!({ "add": 3 }),
    )
    .await;
    let job = app.sync("alice", &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(transactions(&app, &id).await, 83);
    assert_eq!(app.sandbox.oauth_grants()[0].refresh_calls, 1);
    let conn = connection(&app, "alice", &id).await;
    assert!(time(&conn["access_token_expires_at"]) > access);
    assert_eq!(
        time(&conn["refresh_token_expires_at"]),
        refresh,
        "fixed from authorization"
    );
    assert_eq!(audits(&app, "token_refresh_attempted").await, 1);
    assert_eq!(audits(&app, "token_refresh_succeeded").await, 1);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn refresh_handles_same_new_and_missing_refresh_tokens(pool: PgPool) {
    let app = spawn_app(pool).await;
    for rotation in [Rotation::Same, Rotation::New, Rotation::None] {
        app.sandbox.set_oauth_settings(OAuthSettings {
            rotation,
            ..OAuthSettings::default()
        });
        let (id, grant) = app.connect_schwab("bob", 1, 5).await;
        for round in 1..=2u64 {
            // An access token about to expire is refreshed before the sync.
            expiring_now(&app, &id).await;
            let job = app.sync("bob", &id).await;
            assert_eq!(
                job["state"], "succeeded",
                "{rotation:?} round {round}: {job}"
            );
            let g = app
                .sandbox
                .oauth_grants()
                .into_iter()
                .find(|g| g.id == grant)
                .unwrap();
            assert_eq!(g.refresh_calls, round, "{rotation:?}");
        }
        assert_eq!(connection(&app, "bob", &id).await["status"], "active");
    }
    let rotated: Vec<String> = sqlx::query_scalar(
        "SELECT context->>'refresh_token' FROM audit_records \
         WHERE action = 'token_refresh_succeeded' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        rotated,
        ["same", "same", "rotated", "rotated", "kept", "kept"]
    );
    app.stop().await;
}

/// Carol's sync of `id`, whose access token is made to expire, needs a
/// refresh that the provider refuses for good: the job fails on its first
/// attempt and the connection needs its user.
async fn sync_ends_in_reauth(app: &TestApp, id: &str) {
    expiring_now(app, id).await;
    let job = app.sync("carol", id).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempt"], 1, "no retries: {job}");
    assert_eq!(
        connection(app, "carol", id).await["status"],
        "reauth_required"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_dead_refresh_token_requires_reauthorization_without_retries(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (id, grant) = app.connect_schwab("carol", 1, 5).await;
    app.control(&format!("oauth/grants/{grant}/revoke"), json!({}))
        .await;
    sync_ends_in_reauth(&app, &id).await;
    assert_eq!(app.sandbox.oauth_grants()[0].refresh_calls, 1);
    assert_eq!(audits(&app, "reauth_required").await, 1);
    // A reauth_required connection does not sync.
    assert_eq!(app.enqueue_sync("carol", &id).await.status(), 409);
    app.stop().await;
}

/// Schwab users report an expired 7-day refresh token answered not with
/// `invalid_grant` but with HTTP 400 `unsupported_token_type` naming
/// `refresh_token_authentication_error`: that too is a dead grant, so the
/// connection needs its user (not a permanent failure, not retries).
#[sqlx::test(migrations = "../../migrations")]
async fn an_expired_refresh_token_in_schwabs_reported_shape_requires_reauthorization(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.sandbox.set_oauth_settings(OAuthSettings {
        refresh_ttl_secs: 0,
        expired_refresh: ExpiredRefresh::UnsupportedTokenType,
        ..OAuthSettings::default()
    });
    let (id, _) = app.connect_schwab("carol", 1, 5).await;
    sync_ends_in_reauth(&app, &id).await;
    assert_eq!(audits(&app, "reauth_required").await, 1);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn deleting_a_connection_revokes_and_wipes_its_tokens(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (id, grant) = app.connect_schwab("dave", 1, 5).await;
    assert_eq!(app.sync("dave", &id).await["state"], "succeeded");
    // Another user cannot see it, let alone delete it.
    let other = app
        .delete("eve", &format!("/api/v1/connections/{id}"))
        .await;
    assert_eq!(other.status(), 404);
    for _ in 0..2 {
        let resp = app
            .delete("dave", &format!("/api/v1/connections/{id}"))
            .await;
        assert_eq!(resp.status(), 204);
    }
    assert!(app.sandbox.oauth_grants()[grant as usize].revoked);
    let conn = connection(&app, "dave", &id).await;
    assert_eq!(conn["status"], "revoked");
    assert!(conn["access_token_expires_at"].is_null());
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM provider_connections WHERE id = '{id}' AND credentials IS NULL"
        ))
        .await,
        1
    );
    assert_eq!(
        audits(&app, "connection_revoked").await,
        1,
        "the second delete is a no-op"
    );
    assert_eq!(transactions(&app, &id).await, 5, "history stays");
    assert_eq!(app.enqueue_sync("dave", &id).await.status(), 409);
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn connecting_checks_the_credential_field_of_each_provider(pool: PgPool) {
    let app = spawn_app(pool).await;
    let post = |body: Value| {
        app.http
            .post(format!("{}/api/v1/connections", app.api))
            .bearer_auth(app.token("frank"))
            .json(&body)
            .send()
    };
    for (body, field) in [
        (json!({ "provider": "schwab" }), "authorization_code"),
        (
            json!({ "provider": "schwab", "public_token": "x" }),
            "public_token",
        ),
        (
            json!({ "provider": "plaid", "authorization_code": "x" }),
            "authorization_code",
        ),
    ] {
        let resp = post(body.clone()).await.unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let problem: Value = resp.json().await.unwrap();
        assert!(problem.to_string().contains(field), "{body}: {problem}");
    }
    let resp = post(json!({ "provider": "schwab", "authorization_code": "C0.unknown@" }))
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(
        app.count("SELECT count(*) FROM provider_connections").await,
        0
    );
    app.stop().await;
}

/// A Schwab-style connection made straight through the adapter and the
/// store (no API), with credentials encrypted under `cipher`.
async fn schwab_connection(pool: &PgPool, sandbox_url: &str, cipher: Arc<Cipher>) -> ConnectionId {
    let config = test_config();
    let client = SchwabClient::new(SchwabConfig {
        base_url: sandbox_url.to_owned(),
        app_key: config.providers.schwab.app_key.clone(),
        secret: LiveSecret::new(config.providers.schwab.secret.clone()),
        redirect_uri: config.providers.schwab.redirect_uri.clone(),
        timeout: Duration::from_secs(10),
        refresh_token_lifetime: Duration::from_secs(7 * 86_400),
    })
    .unwrap();
    let code = authorization_code(sandbox_url, &config.providers.schwab.redirect_uri, 1, 5).await;
    let grant = client.exchange_code(&code).await.unwrap();
    let store = Store::new(pool.clone(), cipher);
    let conn = store
        .create_connection(NewConnection {
            user: &UserId::parse("alice").unwrap(),
            provider: ProviderKind::Schwab,
            credentials: &ProviderCredentials {
                access_token: grant.access_token,
                refresh_token: grant.refresh_token,
            },
            access_token_expires_at: Some(Utc::now() + chrono::Duration::minutes(30)),
            refresh_token_expires_at: Some(Utc::now() + chrono::Duration::days(7)),
            provider_item_id: None,
            correlation_id: None,
        })
        .await
        .unwrap();
    ConnectionId(conn.id)
}

async fn start_sandbox(config: SandboxConfig, shutdown: &CancellationToken) -> (Sandbox, String) {
    let sandbox = Sandbox::new(config);
    let url = serve_sandbox(&sandbox, shutdown).await;
    (sandbox, url)
}

/// 50 refresh triggers for one connection, run by two worker processes at
/// once, with rotating refresh tokens (a second refresh with the old token
/// would burn the grant): exactly one call reaches the provider.
#[sqlx::test(migrations = "../../migrations")]
async fn fifty_concurrent_refresh_triggers_in_two_daemons_make_one_provider_call(pool: PgPool) {
    let shutdown = CancellationToken::new();
    let (sandbox, sandbox_url) = start_sandbox(
        SandboxConfig {
            oauth: OAuthSettings {
                rotation: Rotation::New,
                ..OAuthSettings::default()
            },
            ..SandboxConfig::default()
        },
        &shutdown,
    )
    .await;
    let key = Cipher::generate_key().unwrap();
    let cipher = Arc::new(Cipher::new("k1", &[("k1".to_owned(), key.clone())].into()).unwrap());
    let connection = schwab_connection(&pool, &sandbox_url, cipher).await;
    // Slow provider: the refresh takes long enough for every trigger to be
    // waiting on it.
    sandbox.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let url = url_of(&pool);
    let env = [
        ("DASHTAM__PROVIDERS__SCHWAB__BASE_URL", sandbox_url.as_str()),
        ("DASHTAM__WORKER__QUEUES__TOKEN_REFRESH__CONCURRENCY", "25"),
        ("DASHTAM__WORKER__QUEUES__TOKEN_REFRESH__FETCH_BATCH", "25"),
        ("DASHTAM__DATABASE__MAX_CONNECTIONS", "30"),
    ];
    let _a = spawn_worker_with(&url, &sandbox_url, &key, &env);
    let _b = spawn_worker_with(&url, &sandbox_url, &key, &env);
    let queue = Queue::new(pool.clone());
    let jobs: Vec<NewJob> = (0..50)
        .map(|_| {
            // Fifty separate triggers: none folded into another.
            let mut j = NewJob::from_args(&TokenRefreshJob::new(connection, Some(1))).unwrap();
            j.unique_key = None;
            j
        })
        .collect();
    queue.enqueue_many(&jobs).await.unwrap();

    wait_for(
        "50 refresh jobs to succeed",
        Duration::from_secs(60),
        || async {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs_all WHERE kind = 'token_refresh' AND state = 'succeeded'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if done == 50 { Ok(()) } else { Err(done) }
        },
    )
    .await;
    let grants = sandbox.oauth_grants();
    assert_eq!(grants[0].refresh_calls, 1, "single flight across daemons");
    assert!(!grants[0].revoked);
    let (version, status): (i64, String) = sqlx::query_as(
        "SELECT credentials_version, status FROM provider_connections WHERE id = $1",
    )
    .bind(connection.0)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((version, status.as_str()), (2, "active"));
    shutdown.cancel();
}

/// A full daemon process, every log line captured at debug level, driven
/// through connect → sync → token expiry → refresh → sync → revoke. No
/// token the provider issued may appear in its logs, API responses, job
/// payloads, audit records or a dump of the database.
#[sqlx::test(migrations = "../../migrations")]
async fn tokens_never_leak_into_logs_responses_or_a_database_dump(pool: PgPool) {
    let shutdown = CancellationToken::new();
    let (sandbox, sandbox_url) = start_sandbox(SandboxConfig::default(), &shutdown).await;
    let url = url_of(&pool);
    let daemon = DaemonProcess::start(&url, &sandbox_url, "debug").await;
    let api = daemon.api.clone();
    let http = reqwest::Client::new();
    let config = test_config();
    let token = daemon.token("alice");
    let mut seen = Vec::<String>::new();
    let code = authorization_code(&sandbox_url, &config.providers.schwab.redirect_uri, 2, 20).await;
    let resp = http
        .post(format!("{api}/api/v1/connections"))
        .bearer_auth(&token)
        .json(&json!({ "provider": "schwab", "authorization_code": code }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let conn: Value = resp.json().await.unwrap();
    seen.push(conn.to_string());
    let id = conn["id"].as_str().unwrap().to_owned();
    seen.push(daemon.sync(&token, &id).await);
    let grant = sandbox.oauth_grants()[0].id;
    http.post(format!(
        "{sandbox_url}/sandbox/dashtam/oauth/grants/{grant}/expire"
    ))
    .send()
    .await
    .unwrap();
    seen.push(daemon.sync(&token, &id).await);
    assert_eq!(sandbox.oauth_grants()[0].refresh_calls, 1);
    for path in [
        format!("/api/v1/connections/{id}"),
        "/api/v1/connections".to_owned(),
        "/api/v1/accounts".to_owned(),
        "/api/v1/transactions?limit=100".to_owned(),
    ] {
        let resp = http
            .get(format!("{api}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}");
        seen.push(resp.text().await.unwrap());
    }
    let dump = std::process::Command::new("pg_dump")
        .args(["--data-only", "--inserts", &url])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(
        dump.contains("token_refresh_succeeded"),
        "the dump has the data"
    );
    let resp = http
        .delete(format!("{api}/api/v1/connections/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (key, jwt) = (daemon.key.clone(), daemon.jwt.clone());
    let logs = daemon.terminate();
    assert!(
        logs.contains("access token refreshed"),
        "logs were captured"
    );
    assert!(logs.contains("sync committed"));

    let g = &sandbox.oauth_grants()[0];
    let secrets: Vec<&String> = g.access_tokens.iter().chain(&g.refresh_tokens).collect();
    assert_eq!(secrets.len(), 3, "two access tokens and a refresh token");
    for secret in secrets {
        let bare = secret.trim_end_matches('@');
        assert!(!logs.contains(bare), "a token is in the logs");
        assert!(!dump.contains(bare), "a token is in the database dump");
        for body in &seen {
            assert!(
                !body.contains(bare),
                "a token is in an API response: {body}"
            );
        }
    }
    assert!(
        !logs.contains(key.expose_secret()),
        "the encryption key is in the logs"
    );
    assert!(
        !logs.contains(jwt.expose_secret()),
        "the signing secret is in the logs"
    );
    shutdown.cancel();
}

/// `dashtam keys rotate` re-encrypts every credential under the new active
/// key; after it, the old key can go.
#[sqlx::test(migrations = "../../migrations")]
async fn keys_rotate_re_encrypts_credentials_under_the_new_key(pool: PgPool) {
    let shutdown = CancellationToken::new();
    let (_sandbox, sandbox_url) = start_sandbox(SandboxConfig::default(), &shutdown).await;
    let (k1, k2) = (
        Cipher::generate_key().unwrap(),
        Cipher::generate_key().unwrap(),
    );
    let old = Arc::new(Cipher::new("k1", &[("k1".to_owned(), k1.clone())].into()).unwrap());
    let a = schwab_connection(&pool, &sandbox_url, old.clone()).await;
    let b = schwab_connection(&pool, &sandbox_url, old).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dashtam"))
        .args([
            "keys",
            "rotate",
            "--batch",
            "1",
            "--database-url",
            &url_of(&pool),
        ])
        .env("DASHTAM__CRYPTO__ACTIVE_KEY", "k2")
        .env("DASHTAM__CRYPTO__KEYS__K1", k1.expose_secret())
        .env("DASHTAM__CRYPTO__KEYS__K2", k2.expose_secret())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("re-encrypted 2 connection credential(s) under key \"k2\""),
        "{stdout}"
    );
    let new_only = Arc::new(Cipher::new("k2", &[("k2".to_owned(), k2)].into()).unwrap());
    let store = Store::new(pool.clone(), new_only);
    for id in [a, b] {
        let state = store.sync_state(id).await.unwrap().unwrap();
        assert!(
            state
                .credentials
                .access_token
                .expose_secret()
                .starts_with("I0.")
        );
    }
    // Nothing is left to rotate.
    assert_eq!(store.rotate_credentials(10).await.unwrap(), 0);
    shutdown.cancel();
}

/// A provider error on the token endpoint of a provider that is otherwise
/// up (it just answered a sync) is transient: the refresh job spends an
/// attempt and retries; a 429 after it pauses the provider and the refresh
/// waits without spending one; then it succeeds. Nothing is marked for
/// reauth. (A refresh meeting an outage spends nothing:
/// `providers::an_outage_at_the_token_endpoint_costs_no_attempt`.)
#[sqlx::test(migrations = "../../migrations")]
async fn a_refresh_that_meets_a_provider_error_retries_and_succeeds(pool: PgPool) {
    let app = spawn_app(pool.clone()).await;
    let (id, grant) = app.connect_schwab("gina", 1, 5).await;
    assert_eq!(app.sync("gina", &id).await["state"], "succeeded");
    app.sandbox
        .push_fault(dashtam_sandbox::ScriptedFault::ServerError);
    app.sandbox
        .push_fault(dashtam_sandbox::ScriptedFault::RateLimited {
            retry_after_secs: 1,
            http_date: false,
        });
    let connection = ConnectionId(id.parse().unwrap());
    let mut job = NewJob::from_args(&TokenRefreshJob::new(connection, Some(1))).unwrap();
    job.max_attempts = 5;
    let job = Queue::new(pool).enqueue(job).await.unwrap().job().id;
    let (state, attempt) = wait_for(
        "the refresh job to finish",
        Duration::from_secs(30),
        || async {
            let (state, attempt): (JobState, i32) =
                sqlx::query_as("SELECT state, attempt FROM jobs_all WHERE id = $1")
                    .bind(job)
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            if state.is_finished() {
                Ok((state, attempt))
            } else {
                Err(state)
            }
        },
    )
    .await;
    assert_eq!((state.as_str(), attempt), ("succeeded", 2));
    let g = &app.sandbox.oauth_grants()[grant as usize];
    assert_eq!(
        g.refresh_calls, 1,
        "the faults were answered before the grant was consulted"
    );
    assert_eq!(connection_status(&app, &id).await, "active");
    assert_eq!(audits(&app, "token_refresh_failed").await, 1);
    assert_eq!(audits(&app, "token_refresh_deferred").await, 1);
    assert_eq!(audits(&app, "token_refresh_succeeded").await, 1);
    app.stop().await;
}

async fn connection_status(app: &TestApp, id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM provider_connections WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}
