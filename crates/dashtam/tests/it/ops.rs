//! The operations assets agree with the code: every metric the Grafana
//! dashboard and the Prometheus alert rules query is one the daemon really
//! exports (checked against a live scrape), and every exported metric is in
//! the written spec (docs/metrics.md).

use dashtam_testkit::wait_for;
use std::collections::BTreeSet;
use std::time::Duration;

use dashtam::app::Role;
use dashtam::config::Cron;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{spawn_app_with, test_config};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Every `dashtam_…` metric name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("dashtam_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(text.len() - start);
        if before_ok {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

fn exprs(panel: &Value, out: &mut Vec<String>) {
    for t in panel["targets"].as_array().into_iter().flatten() {
        if let Some(e) = t["expr"].as_str() {
            out.push(e.to_owned());
        }
    }
    for p in panel["panels"].as_array().into_iter().flatten() {
        exprs(p, out);
    }
}

/// An app running every role (the scheduler ticking every second) after a
/// Plaid sync, an OAuth sync with a token refresh, and a sync left waiting
/// in a paused queue: every metric family has samples.
async fn busy_scrape(pool: PgPool) -> String {
    let mut config = test_config();
    config.scheduler.cycles.token_refresh = "* * * * * *".parse().unwrap();
    config.scheduler.cycles.prune = "* * * * * *".parse().unwrap();
    // Off: a sweep landing mid-test would enqueue the sync the test enqueues.
    config.scheduler.cycles.stale_sync = Cron::off();
    let app = spawn_app_with(pool, &[Role::Api, Role::Worker, Role::Scheduler], config).await;
    let plaid = app.connect("alice", 1, 10).await;
    assert_eq!(app.sync("alice", &plaid).await["state"], "succeeded");
    let (schwab, grant) = app.connect_schwab("alice", 1, 10).await;
    app.control(&format!("oauth/grants/{grant}/expire"), json!({}))
        .await;
    assert_eq!(app.sync("alice", &schwab).await["state"], "succeeded");
    let op = app.operator_token("ops");
    assert_eq!(
        app.post_as(&op, "/api/v1/admin/queues/sync/pause")
            .await
            .status(),
        204
    );
    assert_eq!(app.enqueue_sync("alice", &plaid).await.status(), 202);
    let text = wait_for(
        "the metrics to fill in",
        Duration::from_secs(30),
        || async {
            let text = app.scrape().await;
            if text.contains("dashtam_scheduler_ticks_total{")
                && text.contains("dashtam_queue_oldest_available_age_seconds{")
            {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await;
    app.stop().await;
    text
}

/// Every query of the dashboard and the alert rules, as written.
fn dashboard_and_alert_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{REPO}/ops/grafana/dashboards/dashtam.json")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        exprs(panel, &mut queries);
    }
    queries.push(std::fs::read_to_string(format!("{REPO}/ops/prometheus/alerts.yml")).unwrap());
    queries
}

/// The exact label matchers (`name{label="value", …}`) in `text`, as
/// (series name, [(label, value)]).
fn matchers_in(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for name in names_in(text) {
        let mut rest = text;
        while let Some(at) = rest.find(&format!("{name}{{")) {
            let body = &rest[at + name.len() + 1..];
            let Some(end) = body.find('}') else { break };
            let labels = body[..end]
                .split(',')
                .filter_map(|m| {
                    let (k, v) = m.split_once('=')?;
                    // Exact matchers only (not =~, != or !~).
                    if k.ends_with('!') || v.starts_with('~') {
                        return None;
                    }
                    Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
                })
                .collect();
            out.push((name.clone(), labels));
            rest = &body[end..];
        }
    }
    out
}

/// A daemon that has done nothing yet already exports every series the
/// dashboard and the alerts ask for, label values included, at zero: a
/// fresh deployment's panels show zeros, not "No data", and `increase()`
/// sees the first failure as a change.
#[sqlx::test(migrations = "../../migrations")]
async fn the_first_scrape_has_every_series_the_dashboard_and_alerts_use(pool: PgPool) {
    let app = spawn_app_with(
        pool,
        &[Role::Api, Role::Worker, Role::Scheduler],
        test_config(),
    )
    .await;
    let scrape = app.scrape().await;
    let series: Vec<&str> = scrape.lines().filter(|l| !l.starts_with('#')).collect();
    let mut missing = BTreeSet::new();
    for query in dashboard_and_alert_queries() {
        for name in names_in(&query) {
            // Histograms' series: `_bucket`, `_sum` and `_count`.
            if !series.iter().any(|l| l.starts_with(&name)) {
                missing.insert(name);
            }
        }
        for (name, labels) in matchers_in(&query) {
            let found = series.iter().any(|l| {
                l.starts_with(&format!("{name}{{"))
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            });
            if !found {
                missing.insert(format!("{name}{labels:?}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in the first scrape: {missing:?}\n{scrape}"
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn dashboard_and_alerts_query_only_exported_metrics_and_the_spec_lists_them_all(
    pool: PgPool,
) {
    let scrape = busy_scrape(pool).await;
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    // Histograms are queried by their series names.
    let series: BTreeSet<String> = names_in(
        &scrape
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    );

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{REPO}/ops/grafana/dashboards/dashtam.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["uid"], "dashtam-overview");
    let queries = dashboard_and_alert_queries();
    assert!(queries.len() >= 16, "{} queries", queries.len());
    let used: BTreeSet<String> = queries
        .iter()
        .map(String::as_str)
        .flat_map(names_in)
        .collect();
    let missing: Vec<&String> = used.iter().filter(|n| !series.contains(*n)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    // And the dashboard shows every metric family there is.
    let unshown: Vec<&String> = exported
        .iter()
        .filter(|f| {
            !used
                .iter()
                .any(|u| u == *f || u.strip_suffix("_bucket") == Some(f.as_str()))
        })
        .collect();
    assert!(
        unshown.is_empty(),
        "exported but on no panel or alert: {unshown:?}"
    );

    let spec = std::fs::read_to_string(format!("{REPO}/docs/metrics.md")).unwrap();
    let undocumented: Vec<&String> = exported
        .iter()
        .filter(|f| !spec.contains(&format!("`{f}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
}
