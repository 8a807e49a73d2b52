//! Every response and webhook the sandbox's Plaid side serves, checked
//! against the shapes in Plaid's published OpenAPI reference
//! (`plaid-2020-09-14.json`, written from it by `plaid_schema.py`), not
//! against our own structs: types, `null` only where nullable, required
//! keys present, closed enums, date formats, and no key the reference does
//! not name.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use dashtam_sandbox::{Advance, Sandbox, SandboxConfig};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const SCHEMA: &str = include_str!("plaid-2020-09-14.json");

struct Reference(Value);

impl Reference {
    fn load() -> Self {
        let v: Value = serde_json::from_str(SCHEMA).expect("schema file parses");
        Self(v["schemas"].clone())
    }

    /// Every way `v` departs from the schema `name`.
    fn check(&self, name: &str, v: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        let schema = self.0[name].clone();
        assert!(!schema.is_null(), "no schema {name}");
        self.walk(&schema, v, name, &mut errors);
        errors
    }

    fn assert(&self, name: &str, v: &Value) {
        let errors = self.check(name, v);
        assert!(
            errors.is_empty(),
            "{name} departs from Plaid's reference: {errors:#?}\n{v:#}"
        );
    }

    fn walk(&self, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        let nullable = schema["nullable"].as_bool().unwrap_or(false);
        if let Some(name) = schema["$ref"].as_str() {
            if v.is_null() && nullable {
                return;
            }
            let target = self.0[name].clone();
            return self.walk(&target, v, at, errors);
        }
        if v.is_null() {
            if !nullable {
                errors.push(format!("{at}: null, but the reference does not allow null"));
            }
            return;
        }
        let ty = schema["type"].as_str().unwrap_or("");
        let ok = match ty {
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => true,
        };
        if !ok {
            errors.push(format!("{at}: expected {ty}, got {v}"));
            return;
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(v)
        {
            errors.push(format!("{at}: {v} is not one of the reference's values"));
        }
        match (schema["format"].as_str(), v.as_str()) {
            (Some("date"), Some(s))
                if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_err() =>
            {
                errors.push(format!("{at}: {s:?} is not a date"));
            }
            (Some("date-time"), Some(s)) if chrono::DateTime::parse_from_rfc3339(s).is_err() => {
                errors.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
            }
            _ => {}
        }
        if let Some(items) = v.as_array() {
            for (i, item) in items.iter().enumerate() {
                self.walk(&schema["items"], item, &format!("{at}[{i}]"), errors);
            }
        }
        if let (Some(object), Some(properties)) = (v.as_object(), schema["properties"].as_object())
        {
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap_or_default();
                if !object.contains_key(key) {
                    errors.push(format!("{at}.{key}: required, missing"));
                }
            }
            for (key, value) in object {
                match properties.get(key) {
                    Some(s) => self.walk(s, value, &format!("{at}.{key}"), errors),
                    None => errors.push(format!("{at}.{key}: not in the reference")),
                }
            }
        }
    }
}

struct Harness {
    url: String,
    http: reqwest::Client,
    sandbox: Sandbox,
    reference: Reference,
    hooks: mpsc::UnboundedReceiver<(HeaderMap, Bytes)>,
    hook_url: String,
}

impl Harness {
    async fn start() -> Self {
        let sandbox = Sandbox::new(SandboxConfig::default());
        let addr = sandbox
            .clone()
            .spawn("127.0.0.1:0".parse().unwrap(), std::future::pending())
            .await
            .unwrap();
        let (tx, hooks) = mpsc::unbounded_channel();
        let receiver = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((headers, body));
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, receiver).await });
        Self {
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
            sandbox,
            reference: Reference::load(),
            hooks,
            hook_url,
        }
    }

    /// Posts as Plaid's clients do (keys in headers, `Plaid-Version`).
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let config = self.sandbox.config();
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .header("PLAID-CLIENT-ID", config.client_id)
            .header("PLAID-SECRET", config.secret)
            .header("Plaid-Version", "2020-09-14")
            .json(&body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// A successful call whose body must match `schema`.
    async fn ok(&self, path: &str, body: Value, schema: &str) -> Value {
        let (status, v) = self.post(path, body).await;
        assert_eq!(status, 200, "{path}: {v}");
        self.reference.assert(schema, &v);
        v
    }

    /// A refused call: Plaid's error object with `code`.
    fn refused(&self, (status, v): (u16, Value), code: &str) -> Value {
        assert_eq!(status, v["status"].as_u64().unwrap() as u16, "{v}");
        assert!(status >= 400, "{v}");
        assert_eq!(v["error_code"], code, "{v}");
        self.reference.assert("PlaidError", &v);
        for key in [
            "request_id",
            "causes",
            "documentation_url",
            "display_message",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        v
    }

    async fn link(&self, webhook: Option<&str>) -> String {
        let mut options = json!({ "accounts": 2, "transactions_per_account": 120 });
        if let Some(w) = webhook {
            options["webhook"] = w.into();
        }
        let created = self
            .ok(
                "/sandbox/public_token/create",
                json!({ "institution_id": "ins_109508", "initial_products": ["transactions"], "options": options }),
                "SandboxPublicTokenCreateResponse",
            )
            .await;
        let exchanged = self
            .ok(
                "/item/public_token/exchange",
                json!({ "public_token": created["public_token"] }),
                "ItemPublicTokenExchangeResponse",
            )
            .await;
        exchanged["access_token"].as_str().unwrap().to_owned()
    }

    /// The next webhook the receiver got, checked against `schema` and its
    /// signature verified with the key the sandbox serves.
    async fn webhook(&mut self, schema: &str) -> Value {
        let (headers, body) = tokio::time::timeout(Duration::from_secs(30), self.hooks.recv())
            .await
            .expect("a webhook arrives")
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        self.reference.assert(schema, &v);
        let jwt = headers["plaid-verification"].to_str().unwrap().to_owned();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        let key = self
            .ok(
                "/webhook_verification_key/get",
                json!({ "key_id": header.kid.unwrap() }),
                "WebhookVerificationKeyGetResponse",
            )
            .await["key"]
            .clone();
        let decoding = jsonwebtoken::DecodingKey::from_ec_components(
            key["x"].as_str().unwrap(),
            key["y"].as_str().unwrap(),
        )
        .unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Value>(&jwt, &decoding, &validation)
            .expect("the signature verifies")
            .claims;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(claims["request_body_sha256"], hex.as_str());
        assert!(claims["iat"].as_u64().is_some());
        v
    }
}

#[tokio::test]
async fn every_response_matches_plaids_reference() {
    let mut h = Harness::start().await;
    let hook = h.hook_url.clone();
    let token = h.link(Some(&hook)).await;

    // A whole sync, page by page.
    let mut cursor = Value::Null;
    let mut seen = 0;
    loop {
        let mut body = json!({ "access_token": token, "count": 100 });
        if !cursor.is_null() {
            body["cursor"] = cursor.clone();
        }
        let page = h
            .ok("/transactions/sync", body, "TransactionsSyncResponse")
            .await;
        seen += page["added"].as_array().unwrap().len();
        for t in page["added"].as_array().unwrap() {
            assert!(t["personal_finance_category_icon_url"].is_string());
            let account = t["account_id"].as_str().unwrap();
            assert!(
                page["accounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["account_id"] == account),
                "a page lists the accounts of its transactions"
            );
        }
        cursor = page["next_cursor"].clone();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(seen, 240);
    let accounts = h
        .ok(
            "/accounts/get",
            json!({ "access_token": token }),
            "AccountsGetResponse",
        )
        .await;
    assert_eq!(accounts["accounts"].as_array().unwrap().len(), 2);
    assert_eq!(accounts["item"]["webhook"], hook.as_str());
    h.ok(
        "/item/get",
        json!({ "access_token": token }),
        "ItemGetResponse",
    )
    .await;
    // Options: one account's balances; one account's transactions, with
    // their original descriptions.
    let first = accounts["accounts"][0]["account_id"].clone();
    let one = h
        .ok(
            "/accounts/get",
            json!({ "access_token": token, "options": { "account_ids": [first] } }),
            "AccountsGetResponse",
        )
        .await;
    assert_eq!(one["accounts"].as_array().unwrap().len(), 1);
    let r = h
        .post(
            "/accounts/get",
            json!({ "access_token": token, "options": { "account_ids": ["acc-nope"] } }),
        )
        .await;
    h.refused(r, "INVALID_ACCOUNT_ID");
    let page = h
        .ok(
            "/transactions/sync",
            json!({ "access_token": token, "count": 50, "options": {
                "account_id": first, "include_original_description": true,
                "include_personal_finance_category": true } }),
            "TransactionsSyncResponse",
        )
        .await;
    let added = page["added"].as_array().unwrap();
    assert!(!added.is_empty());
    assert!(
        added
            .iter()
            .all(|t| t["account_id"] == first && t["original_description"].is_string())
    );

    // Data changes: the item was synced and has a webhook, so it is told.
    h.sandbox.advance(
        &token,
        Advance {
            post_pending: true,
            modify: 2,
            remove: 1,
            add: 3,
        },
    );
    let w = h.webhook("SyncUpdatesAvailableWebhook").await;
    assert_eq!(w["webhook_code"], "SYNC_UPDATES_AVAILABLE");
    let page = h
        .ok(
            "/transactions/sync",
            json!({ "access_token": token, "cursor": cursor }),
            "TransactionsSyncResponse",
        )
        .await;
    assert!(!page["removed"].as_array().unwrap().is_empty());
    assert!(!page["modified"].as_array().unwrap().is_empty());

    // An on-demand refresh finds new transactions and says so.
    h.ok(
        "/transactions/refresh",
        json!({ "access_token": token }),
        "TransactionsRefreshResponse",
    )
    .await;
    h.webhook("SyncUpdatesAvailableWebhook").await;

    // Webhooks on demand, as Plaid's sandbox fires them.
    h.ok(
        "/sandbox/item/fire_webhook",
        json!({ "access_token": token, "webhook_code": "SYNC_UPDATES_AVAILABLE" }),
        "SandboxItemFireWebhookResponse",
    )
    .await;
    h.webhook("SyncUpdatesAvailableWebhook").await;
    for (code, schema) in [
        ("PENDING_DISCONNECT", "PendingDisconnectWebhook"),
        ("USER_PERMISSION_REVOKED", "UserPermissionRevokedWebhook"),
        ("LOGIN_REPAIRED", "ItemLoginRepairedWebhook"),
    ] {
        h.ok(
            "/sandbox/item/fire_webhook",
            json!({ "access_token": token, "webhook_type": "ITEM", "webhook_code": code }),
            "SandboxItemFireWebhookResponse",
        )
        .await;
        assert_eq!(h.webhook(schema).await["webhook_code"], code);
    }
    let sent = h
        .http
        .post(format!("{}/sandbox/dashtam/items/{token}/webhook", h.url))
        .json(&json!({ "webhook_type": "ITEM", "webhook_code": "PENDING_EXPIRATION" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 204);
    h.webhook("PendingExpirationWebhook").await;

    // The user must log in again: an ITEM ERROR webhook, and data calls
    // refused with ITEM_LOGIN_REQUIRED.
    h.ok(
        "/sandbox/item/reset_login",
        json!({ "access_token": token }),
        "SandboxItemResetLoginResponse",
    )
    .await;
    let w = h.webhook("ItemErrorWebhook").await;
    assert_eq!(w["error"]["error_code"], "ITEM_LOGIN_REQUIRED");
    let item = h
        .ok(
            "/item/get",
            json!({ "access_token": token }),
            "ItemGetResponse",
        )
        .await;
    assert_eq!(item["item"]["error"]["error_code"], "ITEM_LOGIN_REQUIRED");
    let r = h
        .post("/transactions/sync", json!({ "access_token": token }))
        .await;
    h.refused(r, "ITEM_LOGIN_REQUIRED");

    // Webhook URL changes.
    let updated = h
        .ok(
            "/item/webhook/update",
            json!({ "access_token": token, "webhook": "https://example.com/plaid" }),
            "ItemWebhookUpdateResponse",
        )
        .await;
    assert_eq!(updated["item"]["webhook"], "https://example.com/plaid");
    h.ok(
        "/item/remove",
        json!({ "access_token": token }),
        "ItemRemoveResponse",
    )
    .await;
    let r = h.post("/item/get", json!({ "access_token": token })).await;
    h.refused(r, "INVALID_ACCESS_TOKEN");
}

#[tokio::test]
async fn requests_are_refused_as_plaid_refuses_them() {
    let h = Harness::start().await;
    let token = h.link(None).await;
    let other = h.link(None).await;
    let config = h.sandbox.config();
    let raw = |body: &'static str, content_type: &'static str, version: &'static str| {
        h.http
            .post(format!("{}/transactions/sync", h.url))
            .header("PLAID-CLIENT-ID", config.client_id.clone())
            .header("PLAID-SECRET", config.secret.clone())
            .header("Content-Type", content_type)
            .header("Plaid-Version", version)
            .body(body)
            .send()
    };
    let read = |r: reqwest::Response| async move {
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };

    let r = read(
        raw("{not json", "application/json", "2020-09-14")
            .await
            .unwrap(),
    )
    .await;
    h.refused(r, "INVALID_BODY");
    let r = read(raw("{}", "text/plain", "2020-09-14").await.unwrap()).await;
    h.refused(r, "INVALID_BODY");
    let r = read(raw("{}", "application/json", "2031-01-01").await.unwrap()).await;
    h.refused(r, "INVALID_HEADERS");

    let r = h.post("/transactions/sync", json!({})).await;
    let e = h.refused(r, "MISSING_FIELDS");
    assert!(
        e["error_message"]
            .as_str()
            .unwrap()
            .contains("access_token")
    );
    let r = h
        .post(
            "/transactions/sync",
            json!({ "access_token": token, "colour": "blue", "size": 1 }),
        )
        .await;
    let e = h.refused(r, "UNKNOWN_FIELDS");
    assert!(
        e["error_message"]
            .as_str()
            .unwrap()
            .contains("colour, size")
    );
    let r = h
        .post(
            "/transactions/sync",
            json!({ "access_token": token, "count": 0 }),
        )
        .await;
    h.refused(r, "INVALID_FIELD");
    let r = h
        .post(
            "/transactions/sync",
            json!({ "access_token": token, "count": "ten" }),
        )
        .await;
    h.refused(r, "INVALID_FIELD");

    // Cursors: garbage, and one issued for another item.
    let r = h
        .post(
            "/transactions/sync",
            json!({ "access_token": token, "cursor": "not-a-cursor" }),
        )
        .await;
    h.refused(r, "INVALID_FIELD");
    let theirs = h
        .ok(
            "/transactions/sync",
            json!({ "access_token": other, "count": 5 }),
            "TransactionsSyncResponse",
        )
        .await["next_cursor"]
        .clone();
    let r = h
        .post(
            "/transactions/sync",
            json!({ "access_token": token, "cursor": theirs }),
        )
        .await;
    let e = h.refused(r, "INVALID_FIELD");
    assert_eq!(
        e["error_message"],
        "cursor not associated with access_token"
    );

    // Keys: missing, wrong; tokens: unknown.
    let resp = h
        .http
        .post(format!("{}/accounts/get", h.url))
        .json(&json!({ "access_token": token }))
        .send()
        .await
        .unwrap();
    let e = h.refused(read(resp).await, "MISSING_FIELDS");
    assert!(
        e["error_message"]
            .as_str()
            .unwrap()
            .contains("client_id, secret")
    );
    let resp = h
        .http
        .post(format!("{}/accounts/get", h.url))
        .json(&json!({ "access_token": token, "client_id": config.client_id, "secret": "wrong" }))
        .send()
        .await
        .unwrap();
    h.refused(read(resp).await, "INVALID_API_KEYS");
    let r = h
        .post(
            "/accounts/get",
            json!({ "access_token": "access-sandbox-nope" }),
        )
        .await;
    h.refused(r, "INVALID_ACCESS_TOKEN");
    let r = h
        .post(
            "/item/public_token/exchange",
            json!({ "public_token": "public-sandbox-nope" }),
        )
        .await;
    h.refused(r, "INVALID_PUBLIC_TOKEN");
    let r = h
        .post("/webhook_verification_key/get", json!({ "key_id": "nope" }))
        .await;
    h.refused(r, "INVALID_WEBHOOK_VERIFICATION_KEY_ID");
    // An item with no webhook cannot fire one.
    let r = h
        .post(
            "/sandbox/item/fire_webhook",
            json!({ "access_token": token, "webhook_code": "SYNC_UPDATES_AVAILABLE" }),
        )
        .await;
    h.refused(r, "SANDBOX_WEBHOOK_INVALID");
}

#[test]
fn the_checker_catches_what_broke_plaids_clients() {
    // The sandbox once sent `personal_finance_category_icon_url: null`,
    // which Plaid's Python client refuses.
    let reference = Reference::load();
    let errors = reference.check(
        "PersonalFinanceCategory",
        &json!({ "primary": "FOOD_AND_DRINK", "detailed": null, "colour": 1 }),
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    let errors = reference.check("RemovedTransaction", &json!({ "transaction_id": "t" }));
    assert_eq!(errors, ["RemovedTransaction.account_id: required, missing"]);
}
