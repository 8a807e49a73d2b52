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
        dashtam_store::migrate::status(&pool).await.unwrap(),
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
