//! The binary's command-line contract.

use std::process::Command;
use std::time::Duration;

use dashtam_testkit::wait_for;
use serde_json::{Value, json};
use sqlx::PgPool;

fn dashtam() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dashtam"));
    c.env_remove("RUST_LOG");
    c
}

/// A URL for the test's own database, from the pool the harness made.
pub fn url_of(pool: &PgPool) -> String {
    let opts = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap()
    )
}

#[sqlx::test(migrations = false)]
async fn serve_refuses_a_database_that_is_behind(pool: PgPool) {
    let url = url_of(&pool);
    let out = dashtam()
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .env("DASHTAM__AUTH__JWT_SECRET", "x".repeat(40))
        .env("DASHTAM__CRYPTO__ACTIVE_KEY", "k1")
        .env(
            "DASHTAM__CRYPTO__KEYS__K1",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dashtam migrate"), "{err}");

    let out = dashtam()
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        dashtam_store::migrate::status(&pool.clone().into())
            .await
            .unwrap(),
        dashtam_store::migrate::SchemaStatus::Current
    );
}

#[test]
fn invalid_configuration_names_the_key() {
    let out = dashtam()
        .args(["migrate"])
        .env("DASHTAM__SYNC__PAGE_SIZE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sync.page_size"), "{err}");
}

#[test]
fn serve_without_secrets_says_what_to_set() {
    let out = dashtam().args(["serve"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DASHTAM__AUTH__JWT_SECRET"), "{err}");
}

#[test]
fn every_command_explains_its_flags() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["sandbox", "--help"],
        vec!["demo", "--help"],
        vec!["bench", "sync", "--help"],
        vec!["jobs", "list", "--help"],
        vec!["jobs", "retry", "--help"],
        vec!["queues", "--help"],
        vec!["connections", "list", "--help"],
        vec!["providers", "--help"],
    ] {
        let out = dashtam().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
    let serve = dashtam().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&serve.stdout);
    for flag in [
        "--listen",
        "--database-url",
        "--role",
        "--migrate",
        "DATABASE_URL",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}");
    }
}

/// `dashtam sandbox` lets time pass at the provider every
/// `sandbox.evolve_every_secs`: a synced item gets new data.
#[tokio::test]
async fn the_sandbox_command_evolves_its_data() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dashtam"))
        .args(["sandbox", "--listen", &format!("127.0.0.1:{port}")])
        .env("DASHTAM__SANDBOX__EVOLVE_EVERY_SECS", "1")
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("the sandbox to listen", Duration::from_secs(30), || async {
        http.get(format!("{url}/healthz")).send().await.map(drop)
    })
    .await;
    let public = crate::helpers::sandbox_public_token(&http, &url).await;
    let plaid = |path: &'static str, body: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let sc = dashtam_sandbox::SandboxConfig::default();
            http.post(format!("{url}{path}"))
                .header("PLAID-CLIENT-ID", sc.client_id)
                .header("PLAID-SECRET", sc.secret)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let token = plaid(
        "/item/public_token/exchange",
        json!({ "public_token": public }),
    )
    .await["access_token"]
        .clone();
    // Sync to the end, then wait for the provider's data to move on.
    let mut cursor = Value::Null;
    loop {
        let mut body = json!({ "access_token": token, "count": 500 });
        if !cursor.is_null() {
            body["cursor"] = cursor.clone();
        }
        let page = plaid("/transactions/sync", body).await;
        cursor = page["next_cursor"].clone();
        if page["has_more"] == false {
            break;
        }
    }
    wait_for(
        "new data at the provider",
        Duration::from_secs(30),
        || async {
            let page = plaid(
                "/transactions/sync",
                json!({ "access_token": token, "cursor": cursor }),
            )
            .await;
            if page["added"].as_array().is_some_and(|a| !a.is_empty()) {
                Ok(())
            } else {
                Err(page["next_cursor"].clone())
            }
        },
    )
    .await;
    child.kill().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn demo_syncs_everything_and_exits_zero(pool: PgPool) {
    // 2 Plaid-style and 2 OAuth connections, synced twice; between the
    // rounds the OAuth access tokens expire; then a webhook starts a sync.
    let url = url_of(&pool);
    let out = dashtam()
        .args([
            "demo",
            "--database-url",
            &url,
            "--connections",
            "2",
            "--transactions-per-account",
            "60",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("summary: 9 jobs (9 succeeded, 0 failed), 4 connections"),
        "{stdout}"
    );
    assert!(stdout.contains("started by a webhook"), "{stdout}");
    assert!(stdout.contains("2 token refreshes"), "{stdout}");
}

/// The first run on a machine whose PostgreSQL server is not running (here:
/// nothing listens at the URL given): the demo starts a throwaway cluster
/// with the installed `initdb`/`pg_ctl`, succeeds, prints where to look and
/// an operator token, and removes the cluster.
#[test]
fn the_demo_runs_with_no_postgres_server_listening() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/dashtam");
    let child = dashtam()
        .args([
            "demo",
            "--database-url",
            &url,
            "--connections",
            "1",
            "--oauth-connections",
            "1",
            "--accounts",
            "1",
            "--transactions-per-account",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let cluster = std::env::temp_dir().join(format!("dashtam-pg-{}", child.id()));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("starting a throwaway cluster"), "{stdout}");
    assert!(
        stdout.contains("summary: 5 jobs (5 succeeded, 0 failed)"),
        "{stdout}"
    );
    assert!(stdout.contains("operator token"), "{stdout}");
    assert!(stdout.contains("/ops/ (the operator console"), "{stdout}");
    assert!(!cluster.exists(), "{} left behind", cluster.display());
}

/// Runs `dashtam` against `url` as operating-system user `ops-ana`:
/// (success, stdout, stderr).
fn console(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = dashtam()
        .args(args)
        .env("DATABASE_URL", url)
        .env("USER", "ops-ana")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The operator's console in the terminal, against the database: a dead
/// job is listed, shown with its errors and retried (the same audit record
/// as the admin API's, by `cli:ops-ana`) until it succeeds, then
/// discarded; a queue is paused and resumed; connections are listed by
/// status and providers with their breakers. Human tables by default,
/// `--json` for scripts; a refused action exits 1 saying why.
#[sqlx::test(migrations = "../../migrations")]
async fn the_console_lists_shows_and_acts_on_jobs_queues_connections_and_providers(pool: PgPool) {
    use crate::helpers::{spawn_app_with, test_config};
    use dashtam::app::Role;
    use dashtam_sandbox::Faults;

    let mut config = test_config();
    config.breaker.min_calls = 1000;
    let app = spawn_app_with(pool.clone(), &[Role::Api, Role::Worker], config).await;
    let conn = app.connect("alice", 1, 10).await;
    app.sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let dead = app.sync("alice", &conn).await;
    assert_eq!(dead["state"], "failed", "{dead}");
    let id = dead["id"].as_str().unwrap().to_owned();
    app.sandbox.set_faults(Faults::default());
    let url = url_of(&pool);

    let (ok, out, err) = console(&url, &["jobs", "list", "--state", "failed", "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["data"][0]["id"], id.as_str(), "{listed}");
    let (ok, out, _) = console(&url, &["jobs", "list", "--state", "failed"]);
    assert!(ok);
    assert!(out.starts_with("ID "), "{out}");
    assert!(out.contains(&id) && out.contains("HTTP 500"), "{out}");
    let (ok, _, err) = console(&url, &["jobs", "list", "--state", "dead"]);
    assert!(!ok);
    assert!(err.contains("is not a job state"), "{err}");
    let (ok, out, _) = console(&url, &["jobs", "show", &id]);
    assert!(ok);
    assert!(
        out.contains("state      failed") && out.contains("error      attempt 1"),
        "{out}"
    );

    let (ok, out, err) = console(&url, &["jobs", "retry", &id]);
    assert!(ok, "{err}");
    assert!(out.contains("available again"), "{out}");
    assert_eq!(app.wait_job("alice", &id).await["state"], "succeeded");
    assert_eq!(
        app.count(
            "SELECT count(*) FROM audit_records \
             WHERE action = 'job_retried' AND actor = 'cli:ops-ana'"
        )
        .await,
        1
    );
    let (ok, _, err) = console(&url, &["jobs", "retry", &id]);
    assert!(!ok);
    assert!(err.contains("not failed or cancelled"), "{err}");
    let (ok, _, err) = console(&url, &["jobs", "discard", &id]);
    assert!(ok, "{err}");
    let (ok, _, err) = console(&url, &["jobs", "show", &id]);
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");

    let (ok, _, err) = console(&url, &["queues", "pause", "sync"]);
    assert!(ok, "{err}");
    let (_, out, _) = console(&url, &["queues", "--json"]);
    let queues: Value = serde_json::from_str(&out).unwrap();
    let sync = queues["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "sync")
        .cloned()
        .unwrap();
    assert_eq!(sync["paused"], true, "{queues}");
    let (ok, out, _) = console(&url, &["queues"]);
    assert!(ok && out.contains("paused"), "{out}");
    assert!(console(&url, &["queues", "resume", "sync"]).0);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM audit_records \
             WHERE action IN ('queue_paused', 'queue_resumed') AND actor = 'cli:ops-ana'"
        )
        .await,
        2
    );

    let (_, out, _) = console(
        &url,
        &["connections", "list", "--status", "active", "--json"],
    );
    let active: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(active["data"][0]["id"], conn.as_str(), "{active}");
    assert_eq!(active["data"][0]["user_id"], "alice");
    let (_, out, _) = console(
        &url,
        &[
            "connections",
            "list",
            "--status",
            "reauth_required",
            "--json",
        ],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["data"],
        json!([])
    );
    let (ok, _, err) = console(&url, &["connections", "list", "--status", "bogus"]);
    assert!(!ok && err.contains("reauth_required"), "{err}");

    let (ok, out, _) = console(&url, &["providers", "--json"]);
    assert!(ok);
    let providers: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(providers["data"][0]["provider"], "plaid");
    assert_eq!(providers["data"][0]["breaker"], "closed");
    let (_, out, _) = console(&url, &["providers"]);
    assert!(
        out.starts_with("PROVIDER") && out.contains("schwab"),
        "{out}"
    );
    app.stop().await;
}
