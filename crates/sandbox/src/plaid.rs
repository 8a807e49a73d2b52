//! Plaid's HTTP surface (API version 2020-09-14): the link steps
//! (`/sandbox/public_token/create`, `/item/public_token/exchange`),
//! `/transactions/sync`, `/accounts/get`, `/item/get`, `/item/remove`,
//! `/item/webhook/update`, `/webhook_verification_key/get`, the sandbox's
//! `/sandbox/item/fire_webhook` and `/sandbox/item/reset_login`, and our own
//! control endpoints under `/sandbox/dashtam/`.
//!
//! Responses follow Plaid's OpenAPI reference field by field (types,
//! nullable keys present as `null`, closed enums): the test
//! `tests/plaid.rs` checks every one against a schema taken from it.
//! Requests are checked as Plaid checks them: JSON body, known fields only,
//! required fields present, a known `Plaid-Version`, the API keys.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::data::{Event, Item, ItemSpec, Txn};
use crate::{Advance, Faults, Sandbox, ScriptedFault, draw_fault};

pub(crate) fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/sandbox/public_token/create", post(public_token_create))
        .route("/item/public_token/exchange", post(public_token_exchange))
        .route("/transactions/sync", post(transactions_sync))
        .route("/accounts/get", post(accounts_get))
        .route("/transactions/refresh", post(transactions_refresh))
        .route("/item/get", post(item_get))
        .route("/item/remove", post(item_remove))
        .route("/item/webhook/update", post(item_webhook_update))
        .route(
            "/webhook_verification_key/get",
            post(webhook_verification_key_get),
        )
        .route("/sandbox/item/fire_webhook", post(fire_webhook))
        .route("/sandbox/item/reset_login", post(reset_login))
        .route("/sandbox/dashtam/faults", put(set_faults))
        .route("/sandbox/dashtam/faults/script", post(push_fault))
        .route(
            "/sandbox/dashtam/items/{access_token}/advance",
            post(advance),
        )
        .route(
            "/sandbox/dashtam/items/{access_token}/webhook",
            post(send_webhook),
        )
        .route("/sandbox/dashtam/stats", get(stats))
        .with_state(sandbox)
}

fn request_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The API versions Plaid accepts in `Plaid-Version`.
const API_VERSIONS: [&str; 4] = ["2020-09-14", "2019-05-29", "2018-05-22", "2017-03-08"];

/// Plaid's error object, every key its reference names.
#[derive(Serialize)]
struct PlaidError {
    error_type: &'static str,
    error_code: &'static str,
    error_code_reason: Option<String>,
    error_message: String,
    display_message: Option<String>,
    request_id: String,
    causes: Vec<Value>,
    status: u16,
    documentation_url: String,
    suggested_action: Option<String>,
}

impl PlaidError {
    fn new(status: StatusCode, error_type: &'static str, code: &'static str, msg: String) -> Self {
        PlaidError {
            error_type,
            error_code: code,
            error_code_reason: None,
            error_message: msg,
            display_message: None,
            request_id: request_id(),
            causes: Vec::new(),
            status: status.as_u16(),
            documentation_url: format!(
                "https://plaid.com/docs/errors/{}/#{}",
                error_type.to_lowercase().replace('_', "-"),
                code.to_lowercase().replace('_', "-")
            ),
            suggested_action: None,
        }
    }
}

fn error(
    status: StatusCode,
    error_type: &'static str,
    code: &'static str,
    msg: impl Into<String>,
) -> Response {
    (
        status,
        Json(PlaidError::new(status, error_type, code, msg.into())),
    )
        .into_response()
}

/// `INVALID_REQUEST` with `code`: a request Plaid refuses before looking
/// at it.
fn invalid_request(code: &'static str, msg: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", code, msg)
}

fn invalid_access_token() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_INPUT",
        "INVALID_ACCESS_TOKEN",
        "provided access token is in an invalid format. expected format: access-<environment>-<identifier>",
    )
}

fn login_required() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "ITEM_ERROR",
        "ITEM_LOGIN_REQUIRED",
        "the login details of this item have changed (credentials, MFA, or required user action) and a user login is required to update this information. use Link's update mode to restore the item to a good state",
    )
}

/// The fields an endpoint takes (besides `client_id` and `secret`, which
/// every one takes, in the body or as `PLAID-CLIENT-ID` / `PLAID-SECRET`
/// headers as Plaid's clients send them), and which of them are required.
struct Fields {
    known: &'static [&'static str],
    required: &'static [&'static str],
}

/// Checks a request as Plaid does, in its order: content type, API
/// version, JSON, unknown fields, missing fields, field types, API keys.
fn parse<T: DeserializeOwned>(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    body: &Bytes,
    fields: &Fields,
) -> Result<T, Box<Response>> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let json_body = header("content-type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json_body {
        return Err(Box::new(invalid_request(
            "INVALID_BODY",
            "body could not be parsed as JSON: the Content-Type header must be application/json",
        )));
    }
    if let Some(v) = header("plaid-version")
        && !API_VERSIONS.contains(&v.as_str())
    {
        return Err(Box::new(invalid_request(
            "INVALID_HEADERS",
            format!(
                "Plaid-Version header value {v:?} is not a valid API version; use one of {}",
                API_VERSIONS.join(", ")
            ),
        )));
    }
    let mut value: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(invalid_request(
            "INVALID_BODY",
            format!("body could not be parsed as JSON: {e}"),
        ))
    })?;
    let Some(object) = value.as_object_mut() else {
        return Err(Box::new(invalid_request(
            "INVALID_BODY",
            "body must be a JSON object",
        )));
    };
    let unknown: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|k| !["client_id", "secret"].contains(k) && !fields.known.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(Box::new(invalid_request(
            "UNKNOWN_FIELDS",
            format!(
                "the following fields are not recognized by this endpoint: {}",
                unknown.join(", ")
            ),
        )));
    }
    let mut keys = Vec::new();
    for (name, header_name) in [("client_id", "plaid-client-id"), ("secret", "plaid-secret")] {
        let from_body = object.remove(name);
        match from_body {
            Some(Value::String(s)) => keys.push(Some(s)),
            Some(Value::Null) | None => keys.push(header(header_name)),
            Some(_) => {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_REQUEST",
                    "INVALID_FIELD",
                    format!("{name} must be a string"),
                )));
            }
        }
    }
    let missing: Vec<&str> = ["client_id", "secret"]
        .iter()
        .zip(&keys)
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .chain(
            fields
                .required
                .iter()
                .copied()
                .filter(|k| object.get(*k).is_none_or(Value::is_null)),
        )
        .collect();
    if !missing.is_empty() {
        return Err(Box::new(invalid_request(
            "MISSING_FIELDS",
            format!(
                "the following required fields are missing: {}",
                missing.join(", ")
            ),
        )));
    }
    let req = serde_json::from_value(value).map_err(|e| {
        Box::new(invalid_request(
            "INVALID_FIELD",
            format!("invalid field: {e}"),
        ))
    })?;
    let config = sandbox.config();
    if keys[0].as_deref() != Some(config.client_id.as_str())
        || keys[1].as_deref() != Some(config.secret.as_str())
    {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "INVALID_API_KEYS",
            "invalid client_id or secret provided",
        )));
    }
    Ok(req)
}

/// Parses the request, or returns Plaid's error response from the handler.
macro_rules! parse_or_return {
    ($sandbox:expr, $headers:expr, $body:expr, $fields:expr) => {
        match parse(&$sandbox, &$headers, &$body, &$fields) {
            Ok(r) => r,
            Err(e) => return *e,
        }
    };
}

/// `/sandbox/public_token/create` options: Plaid's (those we accept and
/// ignore start with `_`), and (our extension) the item's size.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkOptions {
    #[serde(default)]
    webhook: Option<String>,
    #[serde(default, rename = "override_username")]
    _override_username: Option<Value>,
    #[serde(default, rename = "override_password")]
    _override_password: Option<Value>,
    #[serde(default, rename = "transactions")]
    _transactions: Option<Value>,
    #[serde(default)]
    accounts: Option<u32>,
    #[serde(default)]
    transactions_per_account: Option<u32>,
}

#[derive(Deserialize)]
struct PublicTokenCreate {
    institution_id: String,
    initial_products: Vec<String>,
    #[serde(default)]
    options: Option<LinkOptions>,
}

const PUBLIC_TOKEN_CREATE: Fields = Fields {
    known: &[
        "institution_id",
        "initial_products",
        "options",
        "user_token",
        "user_id",
    ],
    required: &["institution_id", "initial_products"],
};

async fn public_token_create(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: PublicTokenCreate = parse_or_return!(sandbox, headers, body, PUBLIC_TOKEN_CREATE);
    if req.institution_id.trim().is_empty() {
        return invalid_request("INVALID_FIELD", "institution_id must be a non-empty string");
    }
    if req.initial_products.is_empty() {
        return invalid_request("INVALID_FIELD", "initial_products must not be empty");
    }
    let options = req.options.unwrap_or_default();
    let mut inner = sandbox.lock();
    let token = format!(
        "public-sandbox-{}",
        uuid::Uuid::from_u64_pair(inner.rng.u64(..), inner.rng.u64(..))
    );
    inner.public_tokens.insert(
        token.clone(),
        (
            ItemSpec {
                accounts: options.accounts,
                transactions_per_account: options.transactions_per_account,
            },
            options.webhook,
        ),
    );
    Json(json!({ "public_token": token, "request_id": request_id() })).into_response()
}

#[derive(Deserialize)]
struct Exchange {
    public_token: String,
}

const EXCHANGE: Fields = Fields {
    known: &["public_token"],
    required: &["public_token"],
};

async fn public_token_exchange(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sandbox.auth_latency().await;
    let req: Exchange = parse_or_return!(sandbox, headers, body, EXCHANGE);
    let mut inner = sandbox.lock();
    inner.stats.exchange_calls += 1;
    let Some((spec, webhook)) = inner.public_tokens.remove(&req.public_token) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "INVALID_PUBLIC_TOKEN",
            "provided public token is in an invalid format. expected format: public-<environment>-<identifier>",
        );
    };
    let access_token = crate::data::create_item(&mut inner, spec);
    let item = inner
        .items
        .get_mut(&access_token)
        .expect("the item just created");
    item.webhook = webhook;
    Json(json!({
        "access_token": access_token,
        "item_id": item.item_id,
        "request_id": request_id(),
    }))
    .into_response()
}

/// Requests that name an item and nothing else.
#[derive(Deserialize)]
struct ItemRequest {
    access_token: String,
}

const ITEM_REQUEST: Fields = Fields {
    known: &["access_token"],
    required: &["access_token"],
};

const ACCOUNTS_GET: Fields = Fields {
    known: &["access_token", "options"],
    required: &["access_token"],
};

/// Plaid's `Item` object.
fn item_json(item: &Item) -> Value {
    let error = item
        .login_required
        .then(|| login_error(StatusCode::BAD_REQUEST));
    json!({
        "item_id": item.item_id,
        "institution_id": "ins_109508",
        "institution_name": "First Platypus Bank",
        "webhook": item.webhook,
        "auth_method": null,
        "error": error,
        "available_products": ["balance", "identity", "investments"],
        "billed_products": ["transactions"],
        "products": ["transactions"],
        "consented_products": ["transactions"],
        "consent_expiration_time": null,
        "update_type": "background",
    })
}

fn login_error(status: StatusCode) -> PlaidError {
    PlaidError::new(
        status,
        "ITEM_ERROR",
        "ITEM_LOGIN_REQUIRED",
        "the login details of this item have changed (credentials, MFA, or required user action) and a user login is required to update this information. use Link's update mode to restore the item to a good state".into(),
    )
}

/// Runs `f` on the item `access_token` names, or answers Plaid's error.
fn with_item<R>(
    sandbox: &Sandbox,
    access_token: &str,
    f: impl FnOnce(&mut Item) -> R,
) -> Result<R, Box<Response>> {
    let mut inner = sandbox.lock();
    match inner.items.get_mut(access_token) {
        Some(item) => Ok(f(item)),
        None => Err(Box::new(invalid_access_token())),
    }
}

#[derive(Deserialize)]
struct AccountsGet {
    access_token: String,
    #[serde(default)]
    options: AccountsGetOptions,
}

#[derive(Default, Deserialize)]
struct AccountsGetOptions {
    /// Only these accounts.
    #[serde(default)]
    account_ids: Option<Vec<String>>,
}

async fn accounts_get(State(sandbox): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    let req: AccountsGet = parse_or_return!(sandbox, headers, body, ACCOUNTS_GET);
    let latency = {
        let mut inner = sandbox.lock();
        inner.stats.accounts_get_calls += 1;
        crate::latency(inner.faults.latency_ms)
    };
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }
    let found = with_item(&sandbox, &req.access_token, |item| {
        if item.login_required {
            return Err(Box::new(login_required()));
        }
        let ids = item.account_ids();
        let wanted = match &req.options.account_ids {
            None => ids,
            Some(asked) => match asked.iter().find(|a| !ids.contains(a)) {
                Some(unknown) => {
                    return Err(Box::new(error(
                        StatusCode::BAD_REQUEST,
                        "INVALID_INPUT",
                        "INVALID_ACCOUNT_ID",
                        format!("account_id {unknown} is not an account of this item"),
                    )));
                }
                None => asked.clone(),
            },
        };
        Ok(json!({
            "accounts": accounts(item.index(), wanted),
            "item": item_json(item),
            "request_id": request_id(),
        }))
    });
    match found {
        Ok(Ok(body)) => Json(body).into_response(),
        Ok(Err(refused)) | Err(refused) => *refused,
    }
}

/// `/transactions/refresh`: an on-demand extraction at the institution.
/// Here it finds a few new transactions; as at Plaid, an item with a
/// webhook that was synced before is then sent `SYNC_UPDATES_AVAILABLE`.
async fn transactions_refresh(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: ItemRequest = parse_or_return!(sandbox, headers, body, ITEM_REQUEST);
    match with_item(&sandbox, &req.access_token, |item| item.login_required) {
        Err(e) => return *e,
        Ok(true) => return login_required(),
        Ok(false) => {}
    }
    let step = Advance {
        add: 2,
        ..Advance::default()
    };
    if sandbox.advance(&req.access_token, step).is_none() {
        return invalid_access_token();
    }
    Json(json!({ "request_id": request_id() })).into_response()
}

async fn item_get(State(sandbox): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    let req: ItemRequest = parse_or_return!(sandbox, headers, body, ITEM_REQUEST);
    // `/item/get` answers `ItemWithConsentFields`: an Item and when it was
    // made.
    let item = with_item(&sandbox, &req.access_token, |item| {
        let mut json = item_json(item);
        json["created_at"] = item
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .into();
        json
    });
    match item {
        Ok(item) => Json(json!({
            "item": item,
            "status": null,
            "request_id": request_id(),
        }))
        .into_response(),
        Err(e) => *e,
    }
}

/// Ends the item: its access token is refused from now on.
async fn item_remove(State(sandbox): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    sandbox.auth_latency().await;
    let req: ItemRequest = parse_or_return!(sandbox, headers, body, ITEM_REQUEST);
    if !sandbox.forget_item(&req.access_token) {
        return invalid_access_token();
    }
    Json(json!({ "request_id": request_id() })).into_response()
}

#[derive(Deserialize)]
struct WebhookUpdate {
    access_token: String,
    #[serde(default)]
    webhook: Option<String>,
}

const WEBHOOK_UPDATE: Fields = Fields {
    known: &["access_token", "webhook"],
    required: &["access_token"],
};

/// Registers (or, with `null`, removes) the item's webhook URL.
async fn item_webhook_update(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: WebhookUpdate = parse_or_return!(sandbox, headers, body, WEBHOOK_UPDATE);
    if let Some(url) = &req.webhook
        && reqwest::Url::parse(url).is_err()
    {
        return invalid_request("INVALID_FIELD", "webhook must be a valid URL");
    }
    match with_item(&sandbox, &req.access_token, |item| {
        item.webhook = req.webhook;
        item_json(item)
    }) {
        Ok(item) => Json(json!({ "item": item, "request_id": request_id() })).into_response(),
        Err(e) => *e,
    }
}

#[derive(Deserialize)]
struct KeyRequest {
    key_id: String,
}

const KEY_REQUEST: Fields = Fields {
    known: &["key_id"],
    required: &["key_id"],
};

async fn webhook_verification_key_get(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: KeyRequest = parse_or_return!(sandbox, headers, body, KEY_REQUEST);
    sandbox.lock().stats.verification_key_calls += 1;
    if req.key_id != sandbox.key.kid {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "INVALID_WEBHOOK_VERIFICATION_KEY_ID",
            "invalid key_id provided",
        );
    }
    Json(json!({ "key": sandbox.key.jwk(), "request_id": request_id() })).into_response()
}

/// The webhook a `(webhook_type, webhook_code)` names, for `item`.
fn webhook_body(item: &Item, webhook_type: &str, code: &str) -> Option<Value> {
    let base = |extra: Value| {
        let mut body = json!({
            "webhook_type": webhook_type,
            "webhook_code": code,
            "item_id": item.item_id,
            "environment": "sandbox",
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body
    };
    let soon = (chrono::Utc::now() + chrono::Duration::days(7))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Some(match (webhook_type, code) {
        ("TRANSACTIONS", "SYNC_UPDATES_AVAILABLE") => base(json!({
            "initial_update_complete": true,
            "historical_update_complete": true,
        })),
        ("TRANSACTIONS", "DEFAULT_UPDATE") => base(json!({ "new_transactions": 0 })),
        ("ITEM", "ERROR") => base(json!({ "error": login_error(StatusCode::BAD_REQUEST) })),
        ("ITEM", "PENDING_EXPIRATION") => base(json!({ "consent_expiration_time": soon })),
        ("ITEM", "PENDING_DISCONNECT") => base(json!({
            "reason": "INSTITUTION_TOKEN_EXPIRATION",
            "disconnect_time": soon,
        })),
        ("ITEM", "USER_PERMISSION_REVOKED") => base(json!({ "error": null })),
        ("ITEM", "LOGIN_REPAIRED" | "NEW_ACCOUNTS_AVAILABLE") => base(json!({})),
        _ => return None,
    })
}

/// The `webhook_type` Plaid pairs with a `webhook_code` when the request
/// does not say.
fn default_type(code: &str) -> &'static str {
    match code {
        "SYNC_UPDATES_AVAILABLE" | "DEFAULT_UPDATE" | "RECURRING_TRANSACTIONS_UPDATE" => {
            "TRANSACTIONS"
        }
        _ => "ITEM",
    }
}

/// Sends the webhook to the item's URL; `Ok(false)`: it has none.
fn fire(
    sandbox: &Sandbox,
    access_token: &str,
    webhook_type: &str,
    code: &str,
) -> Result<bool, Box<Response>> {
    let target = with_item(sandbox, access_token, |item| {
        if code == "ERROR" {
            item.login_required = true;
        }
        if code == "LOGIN_REPAIRED" {
            item.login_required = false;
        }
        (item.webhook.clone(), webhook_body(item, webhook_type, code))
    })?;
    match target {
        (_, None) => Err(Box::new(invalid_request(
            "INVALID_FIELD",
            format!("webhook_code {code} cannot be fired for webhook_type {webhook_type}"),
        ))),
        (None, Some(_)) => Ok(false),
        (Some(url), Some(body)) => {
            sandbox.deliver(url, body);
            Ok(true)
        }
    }
}

#[derive(Deserialize)]
struct FireWebhook {
    access_token: String,
    #[serde(default)]
    webhook_type: Option<String>,
    webhook_code: String,
}

const FIRE_WEBHOOK: Fields = Fields {
    known: &["access_token", "webhook_type", "webhook_code"],
    required: &["access_token", "webhook_code"],
};

/// Plaid's `/sandbox/item/fire_webhook`.
async fn fire_webhook(State(sandbox): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    let req: FireWebhook = parse_or_return!(sandbox, headers, body, FIRE_WEBHOOK);
    let webhook_type = req
        .webhook_type
        .unwrap_or_else(|| default_type(&req.webhook_code).to_owned());
    match fire(
        &sandbox,
        &req.access_token,
        &webhook_type,
        &req.webhook_code,
    ) {
        Ok(true) => {
            Json(json!({ "webhook_fired": true, "request_id": request_id() })).into_response()
        }
        Ok(false) => error(
            StatusCode::BAD_REQUEST,
            "SANDBOX_ERROR",
            "SANDBOX_WEBHOOK_INVALID",
            "the webhook for this Item is not set; set it with /item/webhook/update",
        ),
        Err(e) => *e,
    }
}

/// Plaid's `/sandbox/item/reset_login`: the item needs its user to log in
/// again (data calls answer `ITEM_LOGIN_REQUIRED`), and an `ITEM`/`ERROR`
/// webhook says so.
async fn reset_login(State(sandbox): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    let req: ItemRequest = parse_or_return!(sandbox, headers, body, ITEM_REQUEST);
    match fire(&sandbox, &req.access_token, "ITEM", "ERROR") {
        Ok(_) => Json(json!({ "reset_login": true, "request_id": request_id() })).into_response(),
        Err(e) => *e,
    }
}

#[derive(Deserialize)]
struct SyncRequest {
    access_token: String,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    options: SyncOptions,
}

/// The `/transactions/sync` options the sandbox acts on (the others are
/// accepted and make no difference here).
#[derive(Default, Deserialize)]
struct SyncOptions {
    /// Fill `original_description` (else `null`).
    #[serde(default)]
    include_original_description: Option<bool>,
    /// Only this account's transactions.
    #[serde(default)]
    account_id: Option<String>,
}

const SYNC_REQUEST: Fields = Fields {
    known: &["access_token", "cursor", "count", "options"],
    required: &["access_token"],
};

/// Opaque to clients: the item it belongs to, offset into the item's log,
/// the item's generation when issued, and whether more pages were pending
/// then.
struct Cursor {
    item: u64,
    offset: u64,
    generation: u64,
    more: bool,
}

impl Cursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "v2:{}:{}:{}:{}",
            self.item,
            self.offset,
            self.generation,
            u8::from(self.more)
        ))
    }

    fn decode(s: &str) -> Option<Cursor> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let mut parts = raw.strip_prefix("v2:")?.split(':');
        let item = parts.next()?.parse().ok()?;
        let offset = parts.next()?.parse().ok()?;
        let generation = parts.next()?.parse().ok()?;
        let more = parts.next()? == "1";
        parts.next().is_none().then_some(Cursor {
            item,
            offset,
            generation,
            more,
        })
    }
}

#[derive(Serialize)]
struct Balances {
    available: Option<f64>,
    current: Option<f64>,
    iso_currency_code: Option<&'static str>,
    limit: Option<f64>,
    unofficial_currency_code: Option<&'static str>,
    last_updated_datetime: Option<String>,
}

#[derive(Serialize)]
struct AccountWire {
    account_id: String,
    balances: Balances,
    mask: Option<String>,
    name: String,
    official_name: Option<String>,
    #[serde(rename = "type")]
    account_type: &'static str,
    subtype: Option<&'static str>,
    holder_category: Option<&'static str>,
}

#[derive(Serialize)]
struct Location {
    address: Option<String>,
    city: Option<String>,
    region: Option<String>,
    postal_code: Option<String>,
    country: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    store_number: Option<String>,
}

#[derive(Serialize)]
struct PaymentMeta {
    by_order_of: Option<String>,
    payee: Option<String>,
    payer: Option<String>,
    payment_method: Option<String>,
    payment_processor: Option<String>,
    ppd_id: Option<String>,
    reason: Option<String>,
    reference_number: Option<String>,
}

#[derive(Serialize)]
struct PersonalFinanceCategory {
    primary: &'static str,
    detailed: &'static str,
    confidence_level: &'static str,
}

#[derive(Serialize)]
struct TransactionWire {
    account_id: String,
    account_owner: Option<String>,
    #[serde(with = "rust_decimal::serde::float")]
    amount: Decimal,
    iso_currency_code: Option<&'static str>,
    unofficial_currency_code: Option<&'static str>,
    category: Option<Vec<String>>,
    category_id: Option<String>,
    check_number: Option<String>,
    counterparties: Vec<Value>,
    date: NaiveDate,
    datetime: Option<String>,
    authorized_date: Option<NaiveDate>,
    authorized_datetime: Option<String>,
    location: Location,
    logo_url: Option<String>,
    merchant_entity_id: Option<String>,
    merchant_name: Option<&'static str>,
    name: String,
    original_description: Option<String>,
    payment_channel: &'static str,
    payment_meta: PaymentMeta,
    pending: bool,
    pending_transaction_id: Option<String>,
    personal_finance_category: Option<PersonalFinanceCategory>,
    /// A string, never `null` (Plaid's reference; its clients refuse null).
    personal_finance_category_icon_url: String,
    transaction_code: Option<String>,
    transaction_id: String,
    transaction_type: &'static str,
    website: Option<String>,
}

impl From<Txn> for TransactionWire {
    fn from(t: Txn) -> Self {
        TransactionWire {
            account_id: t.account_id,
            account_owner: None,
            amount: t.amount,
            iso_currency_code: Some("USD"),
            unofficial_currency_code: None,
            category: None,
            category_id: None,
            check_number: None,
            counterparties: Vec::new(),
            date: t.date,
            datetime: None,
            authorized_date: Some(t.date),
            authorized_datetime: None,
            location: Location {
                address: None,
                city: None,
                region: None,
                postal_code: None,
                country: None,
                lat: None,
                lon: None,
                store_number: None,
            },
            logo_url: None,
            merchant_entity_id: None,
            merchant_name: t.merchant_name,
            name: t.name,
            original_description: None,
            payment_channel: t.payment_channel,
            payment_meta: PaymentMeta {
                by_order_of: None,
                payee: None,
                payer: None,
                payment_method: None,
                payment_processor: None,
                ppd_id: None,
                reason: None,
                reference_number: None,
            },
            pending: t.pending,
            pending_transaction_id: t.pending_transaction_id,
            personal_finance_category: Some(PersonalFinanceCategory {
                primary: t.category.0,
                detailed: t.category.1,
                confidence_level: "VERY_HIGH",
            }),
            personal_finance_category_icon_url: format!(
                "https://plaid-category-icons.plaid.com/PFC_{}.png",
                t.category.0
            ),
            transaction_code: None,
            transaction_id: t.transaction_id,
            transaction_type: if t.payment_channel == "online" {
                "digital"
            } else {
                "place"
            },
            website: None,
        }
    }
}

#[derive(Serialize)]
struct RemovedWire {
    account_id: String,
    transaction_id: String,
}

#[derive(Serialize)]
struct SyncResponse {
    accounts: Vec<AccountWire>,
    added: Vec<TransactionWire>,
    modified: Vec<TransactionWire>,
    removed: Vec<RemovedWire>,
    next_cursor: String,
    has_more: bool,
    request_id: String,
    transactions_update_status: &'static str,
}

const ACCOUNT_KINDS: [(&str, &str, &str); 3] = [
    ("Plaid Checking", "depository", "checking"),
    ("Plaid Saving", "depository", "savings"),
    ("Plaid Credit Card", "credit", "credit card"),
];

/// The item's accounts with ids `ids` (its `n`-th account is
/// `acc-{item}-{n}`).
fn accounts(item_index: u64, ids: Vec<String>) -> Vec<AccountWire> {
    ids.into_iter()
        .map(|account_id| {
            let n = account_id
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            let (name, kind, subtype) = ACCOUNT_KINDS[(n % ACCOUNT_KINDS.len() as u64) as usize];
            let current = 1000.0 + ((item_index * 7 + n * 131) % 9000) as f64 + 0.25;
            AccountWire {
                account_id,
                balances: Balances {
                    available: (kind == "depository").then_some(current - 100.0),
                    current: Some(current),
                    iso_currency_code: Some("USD"),
                    limit: (kind == "credit").then_some(5000.0),
                    unofficial_currency_code: None,
                    last_updated_datetime: None,
                },
                mask: Some(format!("{:04}", (item_index * 31 + n * 17) % 10_000)),
                name: name.to_owned(),
                official_name: Some(format!("{name} Account")),
                account_type: kind,
                subtype: Some(subtype),
                holder_category: Some("personal"),
            }
        })
        .collect()
}

fn mutation_during_pagination() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "TRANSACTIONS_ERROR",
        "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION",
        "Underlying transaction data changed since last page was fetched. Please restart pagination from last update.",
    )
}

async fn transactions_sync(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: SyncRequest = parse_or_return!(sandbox, headers, body, SYNC_REQUEST);
    let count = req.count.unwrap_or(100);
    if !(1..=500).contains(&count) {
        return invalid_request(
            "INVALID_FIELD",
            "count must be an integer between 1 and 500",
        );
    }
    let cursor = match req.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match Cursor::decode(c) {
            Some(c) => Some(c),
            None => {
                return invalid_request("INVALID_FIELD", "cursor is not a valid cursor");
            }
        },
    };

    // Decide everything under the lock; generate the page outside it.
    let (latency, fault, seed, item_index, generation, from, to, len) = {
        let mut guard = sandbox.lock();
        let inner = &mut *guard;
        inner.stats.transactions_sync_calls += 1;
        let decisecond = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis() / 100).unwrap_or(0));
        inner.stats.count_sync_call(decisecond);
        *inner
            .stats
            .by_item
            .entry(req.access_token.clone())
            .or_default() += 1;
        let Some(item) = inner.items.get_mut(&req.access_token) else {
            return invalid_access_token();
        };
        if item.login_required {
            return login_required();
        }
        if cursor.as_ref().is_some_and(|c| c.item != item.index()) {
            return invalid_request("INVALID_FIELD", "cursor not associated with access_token");
        }
        item.synced = true;
        let paginating = cursor.as_ref().is_some_and(|c| c.more);
        let mutated = cursor
            .as_ref()
            .is_some_and(|c| c.more && c.generation != item.generation);
        let (len, index, generation) = (item.len(), item.index(), item.generation);
        let fault = draw_fault(&mut inner.faults, &mut inner.rng, paginating);
        let fault = fault.or(mutated.then_some(ScriptedFault::MutationDuringPagination));
        if fault.is_some() {
            inner.stats.faults_injected += 1;
        }
        let from = cursor.as_ref().map_or(0, |c| c.offset).min(len);
        let to = (from + count as u64).min(len);
        (
            crate::latency(inner.faults.latency_ms),
            fault,
            inner.config.seed,
            index,
            generation,
            from,
            to,
            len,
        )
    };
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }
    match fault {
        Some(ScriptedFault::ServerError) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "API_ERROR",
                "INTERNAL_SERVER_ERROR",
                "an unexpected error occurred",
            );
        }
        Some(ScriptedFault::RateLimited {
            retry_after_secs,
            http_date,
        }) => {
            // Plaid's own wording; it sends no Retry-After (0 here does
            // the same).
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMIT_EXCEEDED",
                "TRANSACTIONS_SYNC_LIMIT",
                "rate limit exceeded for attempts to access this item. please try again later",
            );
            if retry_after_secs > 0 {
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    crate::retry_after(retry_after_secs, http_date),
                );
            }
            return resp;
        }
        Some(ScriptedFault::MutationDuringPagination) => return mutation_during_pagination(),
        None => {}
    }

    let events = {
        let inner = sandbox.lock();
        match inner.items.get(&req.access_token) {
            // Re-read: the log only grows, and we serve the range decided above.
            Some(item) if item.generation == generation => item.events(seed, from, to),
            Some(_) => return mutation_during_pagination(),
            None => Vec::new(),
        }
    };
    let (mut added, mut modified, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    // Plaid lists only the accounts the page's transactions belong to.
    let mut account_ids = std::collections::BTreeSet::new();
    let wire = |t: Txn| {
        let mut w = TransactionWire::from(t);
        if req.options.include_original_description == Some(true) {
            w.original_description = Some(w.name.to_uppercase());
        }
        w
    };
    let wanted = |account: &str| {
        req.options
            .account_id
            .as_deref()
            .is_none_or(|a| a == account)
    };
    for e in events {
        match e {
            Event::Added(t) | Event::Modified(t) if !wanted(&t.account_id) => {}
            Event::Removed { ref account_id, .. } if !wanted(account_id) => {}
            Event::Added(t) => {
                account_ids.insert(t.account_id.clone());
                added.push(wire(t));
            }
            Event::Modified(t) => {
                account_ids.insert(t.account_id.clone());
                modified.push(wire(t));
            }
            Event::Removed {
                transaction_id,
                account_id,
            } => {
                account_ids.insert(account_id.clone());
                removed.push(RemovedWire {
                    account_id,
                    transaction_id,
                });
            }
        }
    }
    let has_more = to < len;
    Json(SyncResponse {
        accounts: accounts(item_index, account_ids.into_iter().collect()),
        added,
        modified,
        removed,
        next_cursor: Cursor {
            item: item_index,
            offset: to,
            generation,
            more: has_more,
        }
        .encode(),
        has_more,
        request_id: request_id(),
        transactions_update_status: "HISTORICAL_UPDATE_COMPLETE",
    })
    .into_response()
}

/// The `SYNC_UPDATES_AVAILABLE` webhook an item whose data changed is
/// owed: where to send it and what, if it has a webhook and was synced
/// before (Plaid sends none before the first `/transactions/sync`).
pub(crate) fn sync_updates(item: &Item) -> Option<(String, Value)> {
    let url = item.webhook.clone().filter(|_| item.synced)?;
    Some((
        url,
        webhook_body(item, "TRANSACTIONS", "SYNC_UPDATES_AVAILABLE")?,
    ))
}

async fn set_faults(State(sandbox): State<Sandbox>, Json(faults): Json<Faults>) -> StatusCode {
    sandbox.set_faults(faults);
    StatusCode::NO_CONTENT
}

async fn push_fault(
    State(sandbox): State<Sandbox>,
    Json(fault): Json<ScriptedFault>,
) -> StatusCode {
    sandbox.push_fault(fault);
    StatusCode::NO_CONTENT
}

/// The sandbox's control error: plain JSON, not Plaid's shape (these
/// endpoints are ours).
fn control_error(status: StatusCode, msg: String) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

async fn advance(
    State(sandbox): State<Sandbox>,
    Path(access_token): Path<String>,
    body: Bytes,
) -> Response {
    let advance: Advance = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                format!("request body is not valid: {e}"),
            );
        }
    };
    match sandbox.advance(&access_token, advance) {
        Some(done) => Json(done).into_response(),
        None => control_error(StatusCode::NOT_FOUND, "no such item".into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendWebhook {
    webhook_type: String,
    webhook_code: String,
}

/// Any webhook the sandbox knows, including those Plaid's
/// `/sandbox/item/fire_webhook` does not fire (`PENDING_EXPIRATION`).
async fn send_webhook(
    State(sandbox): State<Sandbox>,
    Path(access_token): Path<String>,
    Json(req): Json<SendWebhook>,
) -> Response {
    match fire(
        &sandbox,
        &access_token,
        &req.webhook_type,
        &req.webhook_code,
    ) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => control_error(StatusCode::CONFLICT, "the item has no webhook".into()),
        Err(e) => *e,
    }
}

async fn stats(State(sandbox): State<Sandbox>) -> Response {
    Json(sandbox.stats()).into_response()
}
