//! Plaid's HTTP surface: `/sandbox/public_token/create`,
//! `/item/public_token/exchange`, `/transactions/sync`, and our own control
//! endpoints under `/sandbox/dashtam/`.

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

use crate::data::{Event, ItemSpec, Txn};
use crate::{Advance, Faults, Sandbox, ScriptedFault, draw_fault};

pub(crate) fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/sandbox/public_token/create", post(public_token_create))
        .route("/item/public_token/exchange", post(public_token_exchange))
        .route("/transactions/sync", post(transactions_sync))
        .route("/item/remove", post(item_remove))
        .route("/sandbox/dashtam/faults", put(set_faults))
        .route("/sandbox/dashtam/faults/script", post(push_fault))
        .route(
            "/sandbox/dashtam/items/{access_token}/advance",
            post(advance),
        )
        .route("/sandbox/dashtam/stats", get(stats))
        .with_state(sandbox)
}

fn request_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Plaid's error object.
#[derive(Serialize)]
struct PlaidError {
    error_type: &'static str,
    error_code: &'static str,
    error_message: String,
    display_message: Option<String>,
    documentation_url: String,
    suggested_action: Option<String>,
    request_id: String,
}

fn error(
    status: StatusCode,
    error_type: &'static str,
    code: &'static str,
    msg: String,
) -> Response {
    let body = PlaidError {
        error_type,
        error_code: code,
        error_message: msg,
        display_message: None,
        documentation_url: format!("https://plaid.com/docs/errors/#{}", code.to_lowercase()),
        suggested_action: None,
        request_id: request_id(),
    };
    (status, Json(body)).into_response()
}

fn invalid_request(msg: String) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "INVALID_FIELD",
        msg,
    )
}

/// Parses the body and checks the API keys, from the body or from the
/// `PLAID-CLIENT-ID` / `PLAID-SECRET` headers as Plaid's clients send them.
fn authenticate<T: DeserializeOwned + HasKeys>(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, Box<Response>> {
    let req: T = serde_json::from_slice(body)
        .map_err(|e| Box::new(invalid_request(format!("request body is not valid: {e}"))))?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let client_id = req.client_id().or_else(|| header("plaid-client-id"));
    let secret = req.secret().or_else(|| header("plaid-secret"));
    let config = sandbox.config();
    if client_id.as_deref() != Some(config.client_id.as_str())
        || secret.as_deref() != Some(config.secret.as_str())
    {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "INVALID_API_KEYS",
            "invalid client_id or secret provided".into(),
        )));
    }
    Ok(req)
}

trait HasKeys {
    fn client_id(&self) -> Option<String>;
    fn secret(&self) -> Option<String>;
}

macro_rules! has_keys {
    ($t:ty) => {
        impl HasKeys for $t {
            fn client_id(&self) -> Option<String> {
                self.client_id.clone()
            }
            fn secret(&self) -> Option<String> {
                self.secret.clone()
            }
        }
    };
}

#[derive(Deserialize)]
struct PublicTokenCreate {
    client_id: Option<String>,
    secret: Option<String>,
    #[allow(dead_code)]
    institution_id: String,
    #[allow(dead_code)]
    initial_products: Vec<String>,
    #[serde(default)]
    options: Option<ItemSpec>,
}
has_keys!(PublicTokenCreate);

async fn public_token_create(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: PublicTokenCreate = match authenticate(&sandbox, &headers, &body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let mut inner = sandbox.lock();
    let token = format!("public-sandbox-{:016x}", inner.rng.u64(..));
    inner
        .public_tokens
        .insert(token.clone(), req.options.unwrap_or_default());
    Json(serde_json::json!({ "public_token": token, "request_id": request_id() })).into_response()
}

#[derive(Deserialize)]
struct Exchange {
    client_id: Option<String>,
    secret: Option<String>,
    public_token: String,
}
has_keys!(Exchange);

async fn public_token_exchange(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sandbox.auth_latency().await;
    let req: Exchange = match authenticate(&sandbox, &headers, &body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let mut inner = sandbox.lock();
    inner.stats.exchange_calls += 1;
    let Some(spec) = inner.public_tokens.remove(&req.public_token) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "INVALID_PUBLIC_TOKEN",
            "provided public token is in an invalid format or expired".into(),
        );
    };
    let access_token = crate::data::create_item(&mut inner, spec);
    let item_id = inner.items[&access_token].item_id.clone();
    Json(serde_json::json!({
        "access_token": access_token,
        "item_id": item_id,
        "request_id": request_id(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct ItemRemove {
    client_id: Option<String>,
    secret: Option<String>,
    access_token: String,
}
has_keys!(ItemRemove);

/// Ends the item: its access token is refused from now on.
async fn item_remove(State(sandbox): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    sandbox.auth_latency().await;
    let req: ItemRemove = match authenticate(&sandbox, &headers, &body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    if !sandbox.forget_item(&req.access_token) {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "INVALID_ACCESS_TOKEN",
            "provided access token is in an invalid format".into(),
        );
    }
    Json(serde_json::json!({ "request_id": request_id() })).into_response()
}

#[derive(Deserialize)]
struct SyncRequest {
    client_id: Option<String>,
    secret: Option<String>,
    access_token: String,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    count: Option<i64>,
    #[allow(dead_code)]
    #[serde(default)]
    options: Option<serde_json::Value>,
}
has_keys!(SyncRequest);

/// Opaque to clients: offset into the item's log, the item's generation
/// when issued, and whether more pages were pending then.
struct Cursor {
    offset: u64,
    generation: u64,
    more: bool,
}

impl Cursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "v1:{}:{}:{}",
            self.offset,
            self.generation,
            u8::from(self.more)
        ))
    }

    fn decode(s: &str) -> Option<Cursor> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let mut parts = raw.strip_prefix("v1:")?.split(':');
        let offset = parts.next()?.parse().ok()?;
        let generation = parts.next()?.parse().ok()?;
        let more = parts.next()? == "1";
        parts.next().is_none().then_some(Cursor {
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
    counterparties: Vec<serde_json::Value>,
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
    personal_finance_category_icon_url: Option<String>,
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
            personal_finance_category_icon_url: None,
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

fn accounts(item_index: u64, ids: Vec<String>) -> Vec<AccountWire> {
    ids.into_iter()
        .enumerate()
        .map(|(n, account_id)| {
            let (name, kind, subtype) = ACCOUNT_KINDS[n % ACCOUNT_KINDS.len()];
            let current = 1000.0 + ((item_index * 7 + n as u64 * 131) % 9000) as f64 + 0.25;
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
                mask: Some(format!("{:04}", (item_index * 31 + n as u64 * 17) % 10_000)),
                name: name.to_owned(),
                official_name: Some(format!("{name} Account")),
                account_type: kind,
                subtype: Some(subtype),
                holder_category: Some("personal"),
            }
        })
        .collect()
}

async fn transactions_sync(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: SyncRequest = match authenticate(&sandbox, &headers, &body) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    let count = req.count.unwrap_or(100);
    if !(1..=500).contains(&count) {
        return invalid_request("count must be an integer between 1 and 500".into());
    }
    let cursor = match req.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match Cursor::decode(c) {
            Some(c) => Some(c),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_INPUT",
                    "INVALID_CURSOR",
                    "cursor is not valid".into(),
                );
            }
        },
    };

    // Decide everything under the lock; generate the page outside it.
    let (latency, fault, seed, item_index, generation, from, to, len, account_ids) = {
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
        let Some(item) = inner.items.get(&req.access_token) else {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_INPUT",
                "INVALID_ACCESS_TOKEN",
                "provided access token is in an invalid format".into(),
            );
        };
        let paginating = cursor.as_ref().is_some_and(|c| c.more);
        let fault = draw_fault(&mut inner.faults, &mut inner.rng, paginating);
        let mutated = cursor
            .as_ref()
            .is_some_and(|c| c.more && c.generation != item.generation);
        let fault = fault.or(mutated.then_some(ScriptedFault::MutationDuringPagination));
        if fault.is_some() {
            inner.stats.faults_injected += 1;
        }
        let len = item.len();
        let from = cursor.as_ref().map_or(0, |c| c.offset).min(len);
        let to = (from + count as u64).min(len);
        (
            crate::latency(inner.faults.latency_ms),
            fault,
            inner.config.seed,
            item.index(),
            item.generation,
            from,
            to,
            len,
            item.account_ids(),
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
                "an unexpected error occurred".into(),
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
                "rate limit exceeded for attempts to access this item. please try again later"
                    .into(),
            );
            if retry_after_secs > 0 {
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    crate::retry_after(retry_after_secs, http_date),
                );
            }
            return resp;
        }
        Some(ScriptedFault::MutationDuringPagination) => {
            return error(
                StatusCode::BAD_REQUEST,
                "TRANSACTIONS_ERROR",
                "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION",
                "underlying transaction data changed since last page was fetched. Please restart pagination from last update.".into(),
            );
        }
        None => {}
    }

    let events = {
        let inner = sandbox.lock();
        match inner.items.get(&req.access_token) {
            // Re-read: the log only grows, and we serve the range decided above.
            Some(item) if item.generation == generation => item.events(seed, from, to),
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "TRANSACTIONS_ERROR",
                    "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION",
                    "underlying transaction data changed since last page was fetched. Please restart pagination from last update.".into(),
                );
            }
            None => Vec::new(),
        }
    };
    let (mut added, mut modified, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    for e in events {
        match e {
            Event::Added(t) => added.push(TransactionWire::from(t)),
            Event::Modified(t) => modified.push(TransactionWire::from(t)),
            Event::Removed {
                transaction_id,
                account_id,
            } => removed.push(RemovedWire {
                account_id,
                transaction_id,
            }),
        }
    }
    let has_more = to < len;
    Json(SyncResponse {
        accounts: accounts(item_index, account_ids),
        added,
        modified,
        removed,
        next_cursor: Cursor {
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

async fn advance(
    State(sandbox): State<Sandbox>,
    Path(access_token): Path<String>,
    body: Bytes,
) -> Response {
    let advance: Advance = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return invalid_request(format!("request body is not valid: {e}")),
    };
    match sandbox.advance(&access_token, advance) {
        Some(done) => Json(done).into_response(),
        None => (StatusCode::NOT_FOUND, "no such item").into_response(),
    }
}

async fn stats(State(sandbox): State<Sandbox>) -> Response {
    Json(sandbox.stats()).into_response()
}
