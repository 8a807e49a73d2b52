//! The OpenAPI description: served, complete, and true to the router.

use std::collections::BTreeSet;

use serde_json::Value;
use sqlx::PgPool;

use crate::helpers::spawn_app;

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The whole HTTP contract (README, "API (v1)"): a route missing from the
/// description, or one the description has and this list lacks, fails.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/connections"),
    ("get", "/api/v1/connections"),
    ("get", "/api/v1/connections/{connection_id}"),
    ("delete", "/api/v1/connections/{connection_id}"),
    ("post", "/api/v1/connections/{connection_id}/syncs"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{job_id}"),
    ("get", "/api/v1/jobs/{job_id}/events"),
    ("post", "/api/v1/jobs/{job_id}/cancel"),
    ("get", "/api/v1/admin/queues"),
    ("get", "/api/v1/admin/providers"),
    ("post", "/api/v1/admin/queues/{queue}/pause"),
    ("post", "/api/v1/admin/queues/{queue}/resume"),
    ("post", "/api/v1/admin/jobs/{job_id}/retry"),
    ("delete", "/api/v1/admin/jobs/{job_id}"),
    ("get", "/api/v1/admin/jobs/{job_id}/audit"),
    ("get", "/api/v1/admin/queues/throughput"),
    ("get", "/api/v1/admin/connections"),
    ("get", "/api/v1/scheduler/cycles"),
    ("get", "/api/v1/accounts"),
    ("get", "/api/v1/transactions"),
    ("post", "/api/v1/webhooks/plaid"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/docs"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                .map(|m| (m.clone(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn the_description_lists_every_route_and_every_listed_route_exists(pool: PgPool) {
    let app = spawn_app(pool).await;
    let resp = app
        .http
        .get(format!("{}/api/v1/openapi.json", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let spec: Value = resp.json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");

    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let described = operations(&spec);
    let missing: Vec<_> = expected.difference(&described).collect();
    let unlisted: Vec<_> = described.difference(&expected).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the description: {missing:?}"
    );
    assert!(
        unlisted.is_empty(),
        "described routes not in the contract: {unlisted:?}"
    );

    // Every described operation is served: with made-up ids it may be a
    // 404 problem about the resource, never "no route" or a 405.
    let ops = app.operator_token("ops");
    for (method, path) in &described {
        let concrete = path
            .replace("{connection_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{job_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{queue}", "nightly");
        let url = format!("{}{concrete}", app.api);
        let req = match method.as_str() {
            "get" => app.http.get(url),
            "post" => app.http.post(url),
            _ => app.http.delete(url),
        };
        let resp = req.bearer_auth(&ops).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(!body.contains("no route for"), "{method} {path}: {body}");
        // Every operation documents its errors as problems.
        let op = &spec["paths"][path][method];
        assert!(
            op["responses"]["4XX"].is_object()
                || path.starts_with("/healthz")
                || path.starts_with("/metrics")
                || path == "/readyz",
            "{method} {path} documents no client errors"
        );
        // And every /api/v1 operation but the description's own and the
        // providers' webhooks (signed by the provider instead) needs a token.
        let open = op["security"] == serde_json::json!([{}]);
        assert_eq!(
            open,
            !path.starts_with("/api/v1/")
                || path.ends_with("/openapi.json")
                || path.ends_with("/docs")
                || path.starts_with("/api/v1/webhooks/"),
            "{method} {path}"
        );
    }

    let docs = app
        .http
        .get(format!("{}/api/v1/docs", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    // Served whole from the binary: no third-party script, and a policy
    // that lets only the page's own script (by hash) run.
    let csp = docs.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let page = docs.text().await.unwrap();
    assert!(page.contains("/api/v1/openapi.json"));
    assert!(!page.contains("src="), "the page loads an outside script");
    let script = page
        .split("<script>")
        .nth(1)
        .and_then(|s| s.split("</script>").next())
        .unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, script.as_bytes());
    let hash = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest);
    assert!(
        csp.contains(&format!("script-src 'sha256-{hash}'")),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'"), "{csp}");
    app.stop().await;
}
