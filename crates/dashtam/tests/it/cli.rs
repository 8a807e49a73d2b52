//! The binary's command-line contract.

use std::process::Command;

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

#[sqlx::test(migrations = false)]
async fn demo_syncs_everything_and_exits_zero(pool: PgPool) {
    // 2 Plaid-style and 2 OAuth connections, synced twice; between the
    // rounds the OAuth access tokens expire.
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
        stdout.contains("summary: 8 jobs (8 succeeded, 0 failed), 4 connections"),
        "{stdout}"
    );
    assert!(stdout.contains("2 token refreshes"), "{stdout}");
}
