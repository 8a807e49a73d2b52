//! The operator console's page in headless Chromium, against a real
//! daemon: what an operator does with it, click by click.

use std::path::PathBuf;

use dashtam_testkit::browser::Browser;
use dashtam_testkit::wait_for;
use sqlx::PgPool;

use crate::helpers::{spawn_app_with, test_config};

/// Where the test run's screenshots go (`target/screenshots/`).
fn shot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/screenshots")
        .join(name)
}

/// A client's token is refused at sign-in; an operator signs in, sees the
/// queues of a real run (a dead job among them), opens the failed job,
/// retries it and watches it succeed without reloading, and pauses and
/// resumes a queue, each action confirmed in a dialog and audited.
#[sqlx::test(migrations = "../../migrations")]
async fn an_operator_signs_in_retries_a_failed_job_and_pauses_a_queue(pool: PgPool) {
    use dashtam::app::Role;
    use dashtam_sandbox::Faults;

    let mut config = test_config();
    config.breaker.min_calls = 1000;
    let app = spawn_app_with(pool.clone(), &[Role::Api, Role::Worker], config).await;
    let conn = app.connect("alice", 2, 20).await;
    let ok = app.sync("alice", &conn).await;
    assert_eq!(ok["state"], "succeeded", "{ok}");
    app.sandbox.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let dead = app.sync("alice", &conn).await;
    assert_eq!(dead["state"], "failed", "{dead}");
    let id = dead["id"].as_str().unwrap().to_owned();
    app.sandbox.set_faults(Faults::default());

    let browser = Browser::start().await;
    browser.goto(&format!("{}/ops/", app.api)).await;

    // A client's token: refused, and nothing of the console shows.
    browser.type_into("#token", &app.token("alice")).await;
    browser.click("#sign-in-form button").await;
    browser
        .wait_text("#sign-in-error", |t| t.contains("not an operator"))
        .await;
    assert!(
        !browser
            .displayed(&browser.find("#nav").await.unwrap())
            .await
            .unwrap()
    );

    // An operator, signing in from the keyboard (Enter in the field): the
    // queues of this run.
    let enter = '\u{E007}';
    browser
        .type_into(
            "#token",
            &format!("{}{enter}", app.operator_token("ops-ana")),
        )
        .await;
    browser.wait("article[data-queue='sync']").await;
    browser
        .wait_text("article[data-queue='sync'] td[data-state='failed']", |t| {
            t == "1"
        })
        .await;
    browser
        .wait_text(
            "article[data-queue='sync'] td[data-state='succeeded']",
            |t| t == "1",
        )
        .await;
    browser
        .wait_text("article[data-queue='sync'] .legend", |t| {
            t.contains("1 succeeded") && t.contains("1 failed")
        })
        .await;
    browser.screenshot(&shot("console-queues.png")).await;

    // The failed job, from the jobs list filtered by state.
    browser.click("a[href='#/jobs']").await;
    browser.wait("form.filters select[name='state']").await;
    browser
        .execute("location.hash = '#/jobs?state=failed'; return true;")
        .await;
    browser.click(&format!("tr[data-job='{id}'] a")).await;
    browser
        .wait_text("#job-state", |t| t.starts_with("failed"))
        .await;
    browser
        .wait_text("table[aria-label='Errors']", |t| t.contains("HTTP 500"))
        .await;
    browser
        .wait_text("table[aria-label='Audit trail']", |t| {
            t.contains("sync_attempted") || t.contains("attempt")
        })
        .await;
    browser.screenshot(&shot("console-failed-job.png")).await;

    // Retry, confirmed in the dialog; the page follows the job to success.
    browser.click("#retry").await;
    browser.wait("#confirm[open]").await;
    browser.click("#confirm-yes").await;
    browser
        .wait_text("#job-state", |t| t.starts_with("succeeded"))
        .await;
    browser
        .wait_text("table[aria-label='Audit trail']", |t| {
            t.contains("job_retried")
        })
        .await;
    browser.screenshot(&shot("console-job.png")).await;
    assert_eq!(
        app.count(
            "SELECT count(*) FROM audit_records \
             WHERE action = 'job_retried' AND actor = 'user:ops-ana'"
        )
        .await,
        1
    );

    // Pause the queue, then resume it; a cancelled dialog does nothing.
    browser.click("a[href='#/queues']").await;
    browser
        .click("article[data-queue='sync'] button[data-action='pause']")
        .await;
    browser.click("#confirm-no").await;
    browser
        .click("article[data-queue='sync'] button[data-action='pause']")
        .await;
    browser.click("#confirm-yes").await;
    browser
        .wait("article[data-queue='sync'] [data-paused='true']")
        .await;
    assert_eq!(
        app.count("SELECT count(*) FROM queue_pauses WHERE queue = 'sync'")
            .await,
        1
    );
    browser
        .click("article[data-queue='sync'] button[data-action='resume']")
        .await;
    browser.click("#confirm-yes").await;
    browser
        .wait("article[data-queue='sync'] button[data-action='pause']")
        .await;
    wait_for(
        "the queue resumed",
        std::time::Duration::from_secs(10),
        || async {
            match app
                .count("SELECT count(*) FROM queue_pauses WHERE queue = 'sync'")
                .await
            {
                0 => Ok(()),
                n => Err(n),
            }
        },
    )
    .await;
    assert_eq!(
        app.count(
            "SELECT count(*) FROM audit_records \
             WHERE action IN ('queue_paused', 'queue_resumed') AND actor = 'user:ops-ana'"
        )
        .await,
        2
    );

    // Signing out forgets the token: the next view needs it again.
    browser.click("#sign-out").await;
    browser.wait("#sign-in").await;
    assert_eq!(browser.execute("return document.cookie;").await, "");
    assert_eq!(
        browser
            .execute("return localStorage.length + sessionStorage.length;")
            .await,
        0
    );
    app.stop().await;
}

/// Every file of the console comes from the binary with a strict
/// Content-Security-Policy: the page can run only its own script and
/// style, and talk only to its own origin.
#[sqlx::test(migrations = "../../migrations")]
async fn the_console_is_served_from_the_binary_under_a_strict_policy(pool: PgPool) {
    let app = crate::helpers::spawn_app(pool).await;
    for (path, kind) in [
        ("/ops/", "text/html"),
        ("/ops/app.js", "text/javascript"),
        ("/ops/app.css", "text/css"),
        ("/ops/icon.svg", "image/svg+xml"),
    ] {
        let resp = app
            .http
            .get(format!("{}{path}", app.api))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    let page = app
        .http
        .get(format!("{}/ops/", app.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "inline code: {page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "an outside origin: {page}"
    );
    let resp = app
        .http
        .get(format!("{}/ops", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.url().path(), "/ops/");
    app.stop().await;
}
