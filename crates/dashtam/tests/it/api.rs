//! HTTP contract: authentication, tenant isolation, problem details, bad
//! input that writes nothing, unique sync jobs.

use dashtam::app::Role;
use dashtam_store::Cipher;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{spawn_app, spawn_app_with, test_config};

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

async fn problem(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert_eq!(body["request_id"], request_id.as_str());
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("https://dashtam.dev/problems/")
    );
    assert!(
        body["title"].is_string() && body["detail"].is_string() && body["instance"].is_string()
    );
    body
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn clients_see_only_their_own_resources(pool: PgPool) {
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 1, 20).await;
    let job = app.sync("alice", &conn).await;
    let job_id = job["id"].as_str().unwrap();

    for path in [
        format!("/api/v1/connections/{conn}"),
        format!("/api/v1/jobs/{job_id}"),
    ] {
        let body = problem(app.get("mallory", &path).await, 404).await;
        assert_eq!(body["instance"], path.as_str());
        assert_eq!(app.get("alice", &path).await.status(), 200);
    }
    problem(app.enqueue_sync("mallory", &conn).await, 404).await;
    let list: Value = app
        .get("mallory", "/api/v1/connections")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]));
    let txns: Value = app
        .get("mallory", "/api/v1/transactions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(txns["data"], json!([]));
    let accts: Value = app
        .get("mallory", &format!("/api/v1/accounts?connection_id={conn}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(accts["data"], json!([]));
    assert_eq!(app.count("SELECT count(*) FROM jobs_all").await, 1);
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn authentication_failures_are_401_problems(pool: PgPool) {
    let app = spawn_app(pool).await;
    let url = format!("{}/api/v1/connections", app.api);

    let body = problem(app.http.get(&url).send().await.unwrap(), 401).await;
    assert!(body["detail"].as_str().unwrap().contains("Bearer"));

    let resp = app
        .http
        .get(&url)
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    problem(resp, 401).await;

    let resp = app
        .http
        .get(&url)
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    problem(resp, 401).await;

    let forged = app.token_with_secret("alice", &Cipher::generate_key().unwrap());
    let resp = app.http.get(&url).bearer_auth(forged).send().await.unwrap();
    let body = problem(resp, 401).await;
    assert!(body["detail"].as_str().unwrap().contains("signature"));

    // alg: none is refused.
    let token = app.token("alice");
    let mut parts = token.split('.');
    let (_, payload) = (parts.next(), parts.next().unwrap());
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    problem(
        app.http.get(&url).bearer_auth(none).send().await.unwrap(),
        401,
    )
    .await;

    // Tampered payload.
    let t = app.token("alice");
    let mut segs: Vec<String> = t.split('.').map(str::to_owned).collect();
    segs[1] = app.token("bob").split('.').nth(1).unwrap().to_owned();
    problem(
        app.http
            .get(&url)
            .bearer_auth(segs.join("."))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    let token = app.token("alice");
    let post = |path: &str| {
        app.http
            .post(format!("{}{path}", app.api))
            .bearer_auth(&token)
    };

    let body = problem(app.enqueue_sync("alice", "not-a-uuid").await, 400).await;
    assert_eq!(body["errors"][0]["field"], "connection_id");
    problem(
        app.enqueue_sync("alice", &uuid::Uuid::now_v7().to_string())
            .await,
        404,
    )
    .await;
    problem(app.get("alice", "/api/v1/jobs/12345").await, 400).await;
    problem(
        app.get("alice", &format!("/api/v1/jobs/{}", uuid::Uuid::now_v7()))
            .await,
        404,
    )
    .await;

    let resp = post("/api/v1/connections")
        .header("content-type", "application/json")
        .body("{\"provider\": \"plaid\",")
        .send()
        .await
        .unwrap();
    problem(resp, 400).await;
    let resp = post("/api/v1/connections")
        .body("provider=plaid")
        .send()
        .await
        .unwrap();
    problem(resp, 415).await;
    let resp = post("/api/v1/connections")
        .json(&json!({"provider": "plaid", "public_token": "x", "extra": 1}))
        .send()
        .await
        .unwrap();
    let body = problem(resp, 422).await;
    assert!(body["detail"].as_str().unwrap().contains("extra"), "{body}");
    let resp = post("/api/v1/connections")
        .json(&json!({"provider": "mint", "public_token": "x"}))
        .send()
        .await
        .unwrap();
    let body = problem(resp, 422).await;
    assert_eq!(body["errors"][0]["field"], "provider", "{body}");
    let resp = post("/api/v1/connections")
        .json(&json!({"provider": "plaid", "public_token": 7}))
        .send()
        .await
        .unwrap();
    problem(resp, 422).await;
    let resp = post("/api/v1/connections")
        .json(&json!({"provider": "plaid", "public_token": "public-sandbox-unknown"}))
        .send()
        .await
        .unwrap();
    let body = problem(resp, 422).await;
    assert!(body["detail"].as_str().unwrap().contains("public_token"));
    let huge = "x".repeat(100_000);
    let resp = post("/api/v1/connections")
        .json(&json!({"provider": "plaid", "public_token": huge}))
        .send()
        .await
        .unwrap();
    problem(resp, 413).await;
    problem(app.get("alice", "/api/v1/transactions?limit=0").await, 400).await;
    problem(
        app.get("alice", "/api/v1/transactions?cursor=%%%").await,
        400,
    )
    .await;
    problem(app.get("alice", "/api/v1/transactions?bogus=1").await, 400).await;
    problem(app.get("alice", "/api/v1/nothing-here").await, 404).await;
    let resp = app
        .http
        .delete(format!("{}/api/v1/connections", app.api))
        .send()
        .await
        .unwrap();
    problem(resp, 405).await;

    for table in [
        "provider_connections",
        "jobs",
        "audit_records",
        "accounts",
        "transactions",
    ] {
        assert_eq!(
            app.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn a_connection_has_at_most_one_pending_sync(pool: PgPool) {
    // API only: nothing picks the job up, so it stays pending.
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let conn = app.connect("alice", 1, 10).await;
    let first = app.enqueue_sync("alice", &conn).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["state"], "available");
    let second = app.enqueue_sync("alice", &conn).await;
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(app.count("SELECT count(*) FROM jobs_all").await, 1);
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn health_and_readiness(pool: PgPool) {
    let app = spawn_app(pool).await;
    let ok = app
        .http
        .get(format!("{}/healthz", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ready = app
        .http
        .get(format!("{}/readyz", app.api))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn idempotency_keys_replay_the_first_response(pool: PgPool) {
    let app = spawn_app_with(pool, &[Role::Api], test_config()).await;
    let public_token = app.public_token(3, 10).await;
    let body = json!({ "provider": "plaid", "public_token": public_token });
    let post = |key: &'static str, body: Value| {
        let app = &app;
        async move {
            app.http
                .post(format!("{}/api/v1/connections", app.api))
                .bearer_auth(app.token("alice"))
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let first = post("k-1", body.clone()).await;
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();
    // The public token is single-use at the provider: a real second
    // exchange would fail. The replay never reaches it.
    let again = post("k-1", body.clone()).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["location"], location);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);
    assert_eq!(app.sandbox.stats().exchange_calls, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM provider_connections").await,
        1
    );

    let other = post(
        "k-1",
        json!({ "provider": "plaid", "public_token": "other" }),
    )
    .await;
    let problem = problem(other, 422).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("different request")
    );

    // Keys belong to their subject: bob's k-1 is a new request.
    let bob = app
        .http
        .post(format!("{}/api/v1/connections", app.api))
        .bearer_auth(app.token("bob"))
        .header("Idempotency-Key", "k-1")
        .json(&json!({ "provider": "plaid", "public_token": "nope" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bob.status(), 422);
    assert_eq!(app.sandbox.stats().exchange_calls, 2);

    // Enqueueing: the replay returns the same 202 and job.
    let conn = first["id"].as_str().unwrap();
    let sync = |key: &'static str| {
        let app = &app;
        async move {
            app.http
                .post(format!("{}/api/v1/connections/{conn}/syncs", app.api))
                .bearer_auth(app.token("alice"))
                .header("Idempotency-Key", key)
                .send()
                .await
                .unwrap()
        }
    };
    let s1 = sync("s-1").await;
    assert_eq!(s1.status(), 202);
    let s1: Value = s1.json().await.unwrap();
    let s2 = sync("s-1").await;
    assert_eq!(s2.status(), 202);
    let s2: Value = s2.json().await.unwrap();
    assert_eq!(s1["id"], s2["id"]);
    app.stop().await;
}

#[sqlx::test(migrator = "MIGRATIONS")]
async fn expired_idempotency_keys_are_forgotten(pool: PgPool) {
    let store = dashtam_store::Store::new(
        pool.clone(),
        std::sync::Arc::new(Cipher::ephemeral().unwrap()),
    );
    for (key, age) in [("old", "2 days"), ("new", "1 hour")] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO idempotency_keys (subject, key, request_hash, created_at)
             VALUES ('alice', '{key}', '\\x00', now() - interval '{age}')"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    let pruned = store
        .prune_idempotency_keys(std::time::Duration::from_secs(86_400))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["new"]);
}

/// Every endpoint × role × tenant: the owner may, another client gets a 404
/// (never a 403 that would confirm the id exists) or an empty list, an
/// operator sees job and queue metadata across tenants but no connection,
/// account or transaction of anyone, a client gets 403 on operator
/// endpoints, and nobody gets anything without a token.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn every_endpoint_by_role_and_tenant(pool: PgPool) {
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 1, 5).await;
    let job = app.sync("alice", &conn).await;
    let job = job["id"].as_str().unwrap().to_owned();
    let alice = app.token("alice");
    let bob = app.token("bob");
    let ops = app.operator_token("ops");
    let call = async |token: Option<&str>, method: &str, path: &str| -> (u16, String) {
        let url = format!("{}{path}", app.api);
        let req = match method {
            "GET" => app.http.get(url),
            "POST" => app.http.post(url),
            _ => app.http.delete(url),
        };
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    let c = &conn;
    let j = &job;
    // (method, path, alice (owner), bob (other tenant), operator)
    let table: Vec<(&str, String, u16, u16, u16)> = vec![
        ("GET", "/api/v1/connections".into(), 200, 200, 200),
        ("GET", format!("/api/v1/connections/{c}"), 200, 404, 404),
        // A filter naming another tenant's connection finds nothing.
        (
            "GET",
            format!("/api/v1/accounts?connection_id={c}"),
            200,
            200,
            200,
        ),
        ("GET", "/api/v1/transactions".into(), 200, 200, 200),
        ("GET", "/api/v1/jobs".into(), 200, 200, 200),
        ("GET", format!("/api/v1/jobs/{j}"), 200, 404, 200),
        ("GET", format!("/api/v1/jobs/{j}/events"), 200, 404, 200),
        ("POST", format!("/api/v1/jobs/{j}/cancel"), 409, 404, 409),
        ("GET", "/api/v1/admin/queues".into(), 403, 403, 200),
        ("GET", "/api/v1/admin/providers".into(), 403, 403, 200),
        (
            "POST",
            "/api/v1/admin/queues/sync/pause".into(),
            403,
            403,
            204,
        ),
        (
            "POST",
            "/api/v1/admin/queues/sync/resume".into(),
            403,
            403,
            204,
        ),
        (
            "POST",
            format!("/api/v1/admin/jobs/{j}/retry"),
            403,
            403,
            409,
        ),
        ("GET", "/api/v1/scheduler/cycles".into(), 403, 403, 200),
        (
            "POST",
            format!("/api/v1/connections/{c}/syncs"),
            202,
            404,
            404,
        ),
        ("DELETE", format!("/api/v1/connections/{c}"), 204, 404, 404),
    ];
    for (method, path, owner, other, operator) in &table {
        let (status, _) = call(None, method, path).await;
        assert_eq!(status, 401, "anonymous {method} {path}");
        // The non-owners first: the owner's DELETE must come last.
        let (status, body) = call(Some(&bob), method, path).await;
        assert_eq!(status, *other, "bob {method} {path}: {body}");
        if *method == "GET" && path.starts_with("/api/v1/accounts") {
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap()["data"],
                json!([])
            );
        }
        assert!(
            !body.contains(c.as_str()) || path.contains(c.as_str()),
            "bob saw alice's connection: {body}"
        );
        let (status, body) = call(Some(&ops), method, path).await;
        assert_eq!(status, *operator, "operator {method} {path}: {body}");
        if *method == "GET"
            && [
                "/api/v1/connections",
                "/api/v1/transactions",
                "/api/v1/accounts",
            ]
            .iter()
            .any(|p| path.split('?').next() == Some(p))
        {
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap()["data"],
                json!([]),
                "operators see no tenant's {path}"
            );
        }
        let (status, body) = call(Some(&alice), method, path).await;
        assert_eq!(status, *owner, "alice {method} {path}: {body}");
    }
    // Lists: alice sees hers, bob nothing of hers, operators every job.
    let (_, jobs) = call(Some(&bob), "GET", "/api/v1/jobs").await;
    assert!(!jobs.contains(j.as_str()));
    let (_, jobs) = call(Some(&ops), "GET", "/api/v1/jobs").await;
    assert!(jobs.contains(j.as_str()));
    let (_, txns) = call(Some(&alice), "GET", "/api/v1/transactions").await;
    assert_eq!(
        serde_json::from_str::<Value>(&txns).unwrap()["data"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // Operators may discard a finished job; clients may not.
    let discard = format!("/api/v1/admin/jobs/{j}");
    assert_eq!(call(Some(&alice), "DELETE", &discard).await.0, 403);
    assert_eq!(call(Some(&ops), "DELETE", &discard).await.0, 204);
    app.stop().await;
}

/// Date and amount ranges on transactions are inclusive, combine with
/// pagination, and bad or inverted bounds are 400s naming the parameter.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn transactions_filter_by_date_and_amount(pool: PgPool) {
    use rust_decimal::Decimal;
    let app = spawn_app(pool).await;
    let conn = app.connect("alice", 1, 60).await;
    app.sync("alice", &conn).await;
    let all: Value = app
        .get("alice", "/api/v1/transactions?limit=1000")
        .await
        .json()
        .await
        .unwrap();
    let all = all["data"].as_array().unwrap().clone();
    assert_eq!(all.len(), 60);
    let amount = |t: &Value| t["amount"].as_str().unwrap().parse::<Decimal>().unwrap();
    let date = |t: &Value| t["transaction_date"].as_str().unwrap().to_owned();
    let mut dates: Vec<String> = all.iter().map(date).collect();
    dates.sort();
    let (from, to) = (dates[10].clone(), dates[40].clone());
    let mut amounts: Vec<Decimal> = all.iter().map(amount).collect();
    amounts.sort();
    let (min, max) = (amounts[5], amounts[50]);
    let expected: Vec<&Value> = all
        .iter()
        .filter(|t| date(t) >= from && date(t) <= to && amount(t) >= min && amount(t) <= max)
        .collect();
    assert!(!expected.is_empty() && expected.len() < all.len());

    // Page through the filtered list two at a time.
    let mut got = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!(
            "/api/v1/transactions?limit=2&from={from}&to={to}&min_amount={min}&max_amount={max}"
        );
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app.get("alice", &path).await.json().await.unwrap();
        got.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let ids = |v: &[&Value]| v.iter().map(|t| t["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&got.iter().collect::<Vec<_>>()), ids(&expected));

    for (query, field) in [
        ("from=2026-13-01", "from"),
        ("to=yesterday", "to"),
        ("min_amount=ten", "min_amount"),
        ("max_amount=1.2.3", "max_amount"),
        ("from=2026-02-01&to=2026-01-01", "from"),
        ("min_amount=5&max_amount=-5", "min_amount"),
    ] {
        let body = problem(
            app.get("alice", &format!("/api/v1/transactions?{query}"))
                .await,
            400,
        )
        .await;
        assert_eq!(body["errors"][0]["field"], field, "{query}");
    }
    app.stop().await;
}

/// The jobs list's queue and owner filters, and the operators' list of
/// connections by status: filters narrow, a client cannot look at another
/// user's jobs, and unexpected input (empty, control characters, unknown
/// names) is a 400 naming the parameter, never a database error.
#[sqlx::test(migrator = "MIGRATIONS")]
async fn job_and_connection_filters_narrow_and_refuse_bad_input(pool: PgPool) {
    let app = spawn_app(pool).await;
    let alice = app.connect("alice", 1, 5).await;
    let bob = app.connect("bob", 1, 5).await;
    app.sync("alice", &alice).await;
    app.sync("bob", &bob).await;
    let op = app.operator_token("ops");
    let get = |token: String, path: &'static str| {
        let req = app
            .http
            .get(format!("{}{path}", app.api))
            .bearer_auth(token);
        async move { req.send().await.unwrap() }
    };

    let mine: Value = get(op.clone(), "/api/v1/jobs?owner=alice&queue=sync")
        .await
        .json()
        .await
        .unwrap();
    let owners: Vec<&str> = mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["alice"], "{mine}");
    let none: Value = get(op.clone(), "/api/v1/jobs?queue=token_refresh")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["data"], serde_json::json!([]));
    // A client: its own jobs only; asking for someone else's is a 403.
    problem(get(app.token("alice"), "/api/v1/jobs?owner=bob").await, 403).await;
    let own: Value = get(app.token("alice"), "/api/v1/jobs?owner=alice")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(own["data"].as_array().unwrap().len(), 1, "{own}");
    for (path, field) in [
        ("/api/v1/jobs?owner=", "owner"),
        ("/api/v1/jobs?owner=%C2%82%00", "owner"),
        ("/api/v1/jobs?queue=no%20spaces", "queue"),
        ("/api/v1/admin/connections?status=%1B", "status"),
        ("/api/v1/admin/connections?status=gone", "status"),
    ] {
        let p = problem(get(op.clone(), path).await, 400).await;
        assert_eq!(p["errors"][0]["field"], field, "{path}: {p}");
    }
    let active: Value = get(op.clone(), "/api/v1/admin/connections?status=active")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(active["data"].as_array().unwrap().len(), 2, "{active}");
    app.stop().await;
}
