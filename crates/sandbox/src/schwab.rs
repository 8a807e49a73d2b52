//! The Charles Schwab Trader API's shape: OAuth 2 (`/v1/oauth/authorize`,
//! `/v1/oauth/token`, `/v1/oauth/revoke`) and the date-window data
//! endpoints under `/trader/v1`, plus control endpoints under
//! `/sandbox/dashtam/oauth/`.
//!
//! Token rules as at Schwab: an access token lives `access_ttl_secs` (30
//! minutes), a refresh token `refresh_ttl_secs` (7 days) from the user's
//! authorization, fixed. A refresh returns the same refresh token, a new one
//! (the old one dies at once: the way a race between two refreshers burns
//! the grant), or none, as `rotation` says.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration as Span, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::data::ItemSpec;
use crate::{Inner, Sandbox, ScriptedFault, draw_fault, mix};

/// How the OAuth side behaves.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthSettings {
    pub access_ttl_secs: i64,
    pub refresh_ttl_secs: i64,
    pub rotation: Rotation,
    /// How a refresh with an expired refresh token is refused.
    pub expired_refresh: ExpiredRefresh,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            access_ttl_secs: 1800,
            refresh_ttl_secs: 7 * 24 * 3600,
            rotation: Rotation::Same,
            expired_refresh: ExpiredRefresh::InvalidGrant,
        }
    }
}

/// The answer to a refresh whose 7-day refresh token has expired.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExpiredRefresh {
    /// RFC 6749's `invalid_grant`.
    #[default]
    InvalidGrant,
    /// What Schwab API users report seeing: HTTP 400
    /// `{"error":"unsupported_token_type","error_description":"… refresh_token_authentication_error …"}`.
    UnsupportedTokenType,
}

/// What a refresh returns as `refresh_token`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Rotation {
    /// The same refresh token again.
    #[default]
    Same,
    /// A new refresh token; the old one stops working.
    New,
    /// No refresh token: keep using the old one.
    None,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Buy,
    Sell,
    Dividend,
    Deposit,
    Withdrawal,
    Fee,
}

#[derive(Clone, Debug)]
struct Activity {
    id: u64,
    account: usize,
    time: DateTime<Utc>,
    kind: Kind,
    symbol: &'static str,
    quantity: Decimal,
    price: Decimal,
    net: Decimal,
    pending: bool,
}

struct Account {
    number: String,
    hash: String,
    margin: bool,
}

/// One user authorization and everything it grants.
pub(crate) struct Grant {
    id: u64,
    accounts: Vec<Account>,
    activities: Vec<Activity>,
    created: u64,
    refresh_token: Option<String>,
    refresh_expires_at: DateTime<Utc>,
    revoked: bool,
    refresh_calls: u64,
    issued_access: Vec<String>,
    issued_refresh: Vec<String>,
}

/// What the control endpoint shows of a grant (tokens included: tests
/// search logs and database dumps for them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GrantView {
    pub id: u64,
    pub refresh_calls: u64,
    pub revoked: bool,
    pub accounts: usize,
    pub activities: usize,
    pub access_tokens: Vec<String>,
    pub refresh_tokens: Vec<String>,
}

#[derive(Default)]
pub(crate) struct OAuthState {
    pub settings: OAuthSettings,
    codes: HashMap<String, (ItemSpec, String)>,
    grants: Vec<Grant>,
    /// access token → (grant index, expiry)
    access: HashMap<String, (usize, DateTime<Utc>)>,
    next_code: u64,
}

impl OAuthState {
    pub fn new(settings: OAuthSettings) -> Self {
        Self {
            settings,
            ..Default::default()
        }
    }

    pub fn grant_count(&self) -> usize {
        self.grants.len()
    }
}

const SYMBOLS: [(&str, i64); 6] = [
    ("AAPL", 18_950),
    ("MSFT", 41_520),
    ("VTI", 27_480),
    ("SCHD", 8_130),
    ("NVDA", 13_210),
    ("TSLA", 24_460),
];

fn token(seed: u64, kind: &str, n: u64) -> String {
    format!(
        "{kind}-{:016x}{:016x}",
        mix(seed ^ n ^ 0x5c4a),
        mix(n.wrapping_mul(31) ^ seed)
    )
}

impl Grant {
    fn new(
        seed: u64,
        id: u64,
        spec: &ItemSpec,
        defaults: (u32, u32),
        settings: &OAuthSettings,
    ) -> Self {
        let now = Utc::now();
        let n_accounts = spec.accounts.unwrap_or(defaults.0).max(1) as usize;
        let per_account = spec.transactions_per_account.unwrap_or(defaults.1) as u64;
        let accounts = (0..n_accounts)
            .map(|a| {
                let h = mix(seed ^ mix(id) ^ a as u64);
                Account {
                    number: format!("{:08}", h % 100_000_000),
                    hash: format!("{:016X}{:016X}", mix(h), mix(h ^ 1)),
                    margin: a % 2 == 0,
                }
            })
            .collect();
        let mut grant = Grant {
            id,
            accounts,
            activities: Vec::new(),
            created: 0,
            refresh_token: None,
            refresh_expires_at: now + Span::seconds(settings.refresh_ttl_secs),
            revoked: false,
            refresh_calls: 0,
            issued_access: Vec::new(),
            issued_refresh: Vec::new(),
        };
        // The history spans the 360 days before the authorization; the
        // last two days' activities are still pending.
        let total = per_account * n_accounts as u64;
        for i in 0..total {
            let back = Span::seconds(((total - i) * 360 * 86_400 / total.max(1)) as i64);
            grant.push(seed, now - back, now - back > now - Span::days(2));
        }
        grant
    }

    fn push(&mut self, seed: u64, time: DateTime<Utc>, pending: bool) {
        let i = self.created;
        self.created += 1;
        let h = mix(seed ^ mix(self.id.wrapping_mul(0x100_0000_01B3)) ^ mix(i));
        let (symbol, base) = SYMBOLS[(h % SYMBOLS.len() as u64) as usize];
        let price = Decimal::new(base + ((h >> 20) % 500) as i64, 2);
        let quantity = Decimal::from((h >> 12) % 20 + 1);
        let kind = match (h >> 40) % 10 {
            0..=3 => Kind::Buy,
            4 | 5 => Kind::Sell,
            6 => Kind::Dividend,
            7 => Kind::Deposit,
            8 => Kind::Withdrawal,
            _ => Kind::Fee,
        };
        let cash = Decimal::new(1_000 + ((h >> 24) % 500_000) as i64, 2);
        let net = match kind {
            Kind::Buy => -(price * quantity),
            Kind::Sell => price * quantity,
            Kind::Dividend => Decimal::new(((h >> 30) % 20_000) as i64 + 50, 2),
            Kind::Deposit => cash,
            Kind::Withdrawal => -cash,
            Kind::Fee => -Decimal::new(((h >> 30) % 2_500) as i64 + 1, 2),
        };
        self.activities.push(Activity {
            id: 90_000_000_000 + self.id * 10_000_000 + i,
            account: (i % self.accounts.len() as u64) as usize,
            time,
            kind,
            symbol,
            quantity,
            price,
            net,
            pending,
        });
    }

    fn view(&self) -> GrantView {
        GrantView {
            id: self.id,
            refresh_calls: self.refresh_calls,
            revoked: self.revoked,
            accounts: self.accounts.len(),
            activities: self.activities.len(),
            access_tokens: self.issued_access.clone(),
            refresh_tokens: self.issued_refresh.clone(),
        }
    }
}

impl Activity {
    fn wire(&self, account: &Account) -> Value {
        let time = self.time.format("%Y-%m-%dT%H:%M:%S%z").to_string();
        let settle = (self.time + Span::days(1))
            .format("%Y-%m-%dT%H:%M:%S%z")
            .to_string();
        let (ty, activity_type, description) = match self.kind {
            Kind::Buy | Kind::Sell => (
                "TRADE",
                "EXECUTION",
                format!(
                    "{} {}",
                    if matches!(self.kind, Kind::Buy) {
                        "BUY"
                    } else {
                        "SELL"
                    },
                    self.symbol
                ),
            ),
            Kind::Dividend => (
                "DIVIDEND_OR_INTEREST",
                "TRANSFER",
                format!("QUALIFIED DIVIDEND {}", self.symbol),
            ),
            Kind::Deposit => ("ACH_RECEIPT", "TRANSFER", "ACH DEPOSIT".to_owned()),
            Kind::Withdrawal => ("ACH_DISBURSEMENT", "TRANSFER", "ACH WITHDRAWAL".to_owned()),
            Kind::Fee => ("CASH_DISBURSEMENT", "TRANSFER", "ADR MGMT FEE".to_owned()),
        };
        let mut items = vec![json!({
            "instrument": {"assetType": "CURRENCY", "status": "ACTIVE", "symbol": "CURRENCY_USD",
                            "description": "USD currency", "instrumentId": 1, "closingPrice": 0},
            "amount": self.net, "cost": 0, "feeType": null, "positionEffect": null
        })];
        if matches!(self.kind, Kind::Buy | Kind::Sell) {
            items.push(json!({
                "instrument": {"assetType": "EQUITY", "status": "ACTIVE", "symbol": self.symbol,
                                "cusip": format!("{:09}", mix(self.symbol.len() as u64) % 1_000_000_000),
                                "instrumentId": mix(self.symbol.as_bytes()[0] as u64) % 1_000_000, "closingPrice": self.price},
                "amount": if matches!(self.kind, Kind::Buy) { self.quantity } else { -self.quantity },
                "cost": -self.net, "price": self.price,
                "positionEffect": if matches!(self.kind, Kind::Buy) { "OPENING" } else { "CLOSING" }
            }));
        }
        json!({
            "activityId": self.id,
            "time": time,
            "description": description,
            "accountNumber": account.number,
            "type": ty,
            "status": if self.pending { "PENDING" } else { "VALID" },
            "subAccount": if account.margin { "MARGIN" } else { "CASH" },
            "tradeDate": time,
            "settlementDate": settle,
            "positionId": self.id % 1_000_000,
            "orderId": self.id % 10_000_000,
            "netAmount": self.net,
            "activityType": activity_type,
            "transferItems": items,
        })
    }
}

pub(crate) fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/v1/oauth/authorize", get(authorize))
        .route("/v1/oauth/token", post(token_endpoint))
        .route("/v1/oauth/revoke", post(revoke))
        .route("/trader/v1/accounts/accountNumbers", get(account_numbers))
        .route("/trader/v1/accounts", get(accounts))
        .route("/trader/v1/accounts/{hash}/transactions", get(transactions))
        .route("/sandbox/dashtam/oauth/settings", put(set_settings))
        .route("/sandbox/dashtam/oauth/grants", get(grants))
        .route("/sandbox/dashtam/oauth/grants/{id}/expire", post(expire))
        .route(
            "/sandbox/dashtam/oauth/grants/{id}/revoke",
            post(revoke_grant),
        )
        .route("/sandbox/dashtam/oauth/grants/{id}/advance", post(advance))
        .with_state(sandbox)
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// A Trader API error: `{"message": …, "errors": [ … ]}`.
fn api_error(status: StatusCode, detail: &str) -> Response {
    let message = status.canonical_reason().unwrap_or("Error");
    (
        status,
        Json(json!({ "message": message, "errors": [detail] })),
    )
        .into_response()
}

/// Latency and the next fault, drawn under the lock and applied outside it.
async fn faults(sandbox: &Sandbox) -> Option<Response> {
    let (latency, fault) = {
        let mut guard = sandbox.lock();
        let inner = &mut *guard;
        let fault = draw_fault(&mut inner.faults, &mut inner.rng, false);
        if fault.is_some() {
            inner.stats.faults_injected += 1;
        }
        (crate::latency(inner.faults.latency_ms), fault)
    };
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }
    match fault {
        Some(ScriptedFault::RateLimited {
            retry_after_secs,
            http_date,
        }) => {
            let mut r = api_error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            r.headers_mut().insert(
                header::RETRY_AFTER,
                crate::retry_after(retry_after_secs, http_date),
            );
            Some(r)
        }
        Some(_) => Some(api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "An unexpected error occurred",
        )),
        None => None,
    }
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    #[serde(default)]
    state: Option<String>,
    /// Sandbox only: the size of the user's data.
    #[serde(default)]
    accounts: Option<u32>,
    #[serde(default)]
    transactions_per_account: Option<u32>,
}

/// The user's consent step; the sandbox's user always consents and is sent
/// back to `redirect_uri` with a one-time code.
async fn authorize(State(sandbox): State<Sandbox>, Query(q): Query<AuthorizeQuery>) -> Response {
    let mut inner = sandbox.lock();
    if q.client_id != inner.config.client_id {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "Unknown client_id",
        );
    }
    let seed = inner.config.seed;
    inner.oauth.next_code += 1;
    let code = format!("C0.{}@", token(seed, "code", inner.oauth.next_code));
    let spec = ItemSpec {
        accounts: q.accounts,
        transactions_per_account: q.transactions_per_account,
    };
    inner
        .oauth
        .codes
        .insert(code.clone(), (spec, q.redirect_uri.clone()));
    let sep = if q.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let mut to = format!(
        "{}{sep}code={}&session={:016x}",
        q.redirect_uri,
        code.replace('@', "%40"),
        fastrand::u64(..)
    );
    if let Some(state) = q.state {
        to.push_str("&state=");
        to.push_str(&state.replace('&', "%26"));
    }
    Redirect::to(&to).into_response()
}

/// HTTP Basic client authentication as RFC 6749 §2.3.1 has it: the client
/// id and secret are each form-urlencoded, then joined by `:` and base64
/// encoded (so a secret with `+`, `/` or `=` arrives as `%2B`, `%2F`,
/// `%3D`). Many clients (authlib, hence schwab-py; `requests`' basic auth)
/// send them unencoded instead, which is accepted too.
fn client_ok(inner: &Inner, headers: &HeaderMap) -> bool {
    let decoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v.trim()).ok())
        .and_then(|v| String::from_utf8(v).ok());
    let Some((id, secret)) = decoded.as_deref().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let form_decode = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (want_id, want_secret) = (&inner.config.client_id, &inner.config.secret);
    (form_decode(id) == *want_id && form_decode(secret) == *want_secret)
        || (id == want_id && secret == want_secret)
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

fn issue_access(inner: &mut Inner, grant: usize) -> (String, i64) {
    let seed = inner.config.seed;
    let ttl = inner.oauth.settings.access_ttl_secs;
    inner.oauth.next_code += 1;
    let access = format!("I0.{}@", token(seed, "access", inner.oauth.next_code));
    inner
        .oauth
        .access
        .insert(access.clone(), (grant, Utc::now() + Span::seconds(ttl)));
    inner.oauth.grants[grant].issued_access.push(access.clone());
    (access, ttl)
}

fn new_refresh(inner: &mut Inner, grant: usize) -> String {
    let seed = inner.config.seed;
    inner.oauth.next_code += 1;
    let refresh = format!("R0.{}@", token(seed, "refresh", inner.oauth.next_code));
    let g = &mut inner.oauth.grants[grant];
    g.refresh_token = Some(refresh.clone());
    g.issued_refresh.push(refresh.clone());
    refresh
}

async fn token_endpoint(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    sandbox.auth_latency().await;
    if let Some(r) = faults(&sandbox).await {
        return r;
    }
    let mut guard = sandbox.lock();
    let inner = &mut *guard;
    if !client_ok(inner, &headers) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    let (grant, refresh) = match form.grant_type.as_str() {
        "authorization_code" => {
            inner.stats.exchange_calls += 1;
            let Some(code) = form.code else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "code is required",
                );
            };
            let Some((spec, redirect)) = inner.oauth.codes.remove(&code) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Authorization code is invalid or already used",
                );
            };
            if form.redirect_uri.as_deref() != Some(redirect.as_str()) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "redirect_uri does not match the authorization request",
                );
            }
            let id = inner.oauth.grants.len() as u64;
            let defaults = (
                inner.config.accounts_per_item,
                inner.config.transactions_per_account,
            );
            let grant = Grant::new(
                inner.config.seed,
                id,
                &spec,
                defaults,
                &inner.oauth.settings,
            );
            inner.oauth.grants.push(grant);
            let index = inner.oauth.grants.len() - 1;
            (index, Some(new_refresh(inner, index)))
        }
        "refresh_token" => {
            let Some(presented) = form.refresh_token else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "refresh_token is required",
                );
            };
            let found = inner
                .oauth
                .grants
                .iter()
                .position(|g| g.issued_refresh.contains(&presented));
            let Some(index) = found else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Unknown refresh token",
                );
            };
            let g = &mut inner.oauth.grants[index];
            g.refresh_calls += 1;
            if g.revoked || g.refresh_token.as_deref() != Some(presented.as_str()) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Refresh token is no longer valid",
                );
            }
            if Utc::now() >= g.refresh_expires_at {
                return match inner.oauth.settings.expired_refresh {
                    ExpiredRefresh::InvalidGrant => oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "Refresh token has expired; the user must authorize again",
                    ),
                    ExpiredRefresh::UnsupportedTokenType => oauth_error(
                        StatusCode::BAD_REQUEST,
                        "unsupported_token_type",
                        "400 Bad Request: \"{\"error_description\":\"Exception while authenticating refresh token [ref-token-expired], refresh_token_authentication_error\",\"error\":\"refresh_token_authentication_error\"}\"",
                    ),
                };
            }
            let refresh = match inner.oauth.settings.rotation {
                Rotation::Same => Some(presented),
                Rotation::New => Some(new_refresh(inner, index)),
                Rotation::None => None,
            };
            (index, refresh)
        }
        other => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type {other:?} is not supported"),
            );
        }
    };
    let (access, ttl) = issue_access(inner, grant);
    let mut body = json!({
        "expires_in": ttl,
        "token_type": "Bearer",
        "scope": "api",
        "access_token": access,
        "id_token": format!("eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.sandbox.{}", inner.oauth.grants[grant].id),
    });
    if let Some(r) = refresh {
        body["refresh_token"] = r.into();
    }
    Json(body).into_response()
}

#[derive(Deserialize)]
struct RevokeForm {
    token: String,
}

/// RFC 7009 token revocation: revoking either token ends the grant.
async fn revoke(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> Response {
    sandbox.auth_latency().await;
    let mut inner = sandbox.lock();
    if !client_ok(&inner, &headers) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    let by_access = inner.oauth.access.get(&form.token).map(|(g, _)| *g);
    let index = by_access.or_else(|| {
        inner
            .oauth
            .grants
            .iter()
            .position(|g| g.issued_refresh.contains(&form.token))
    });
    if let Some(i) = index {
        end_grant(&mut inner, i);
    }
    StatusCode::OK.into_response()
}

fn end_grant(inner: &mut Inner, index: usize) {
    inner.oauth.grants[index].revoked = true;
    inner.oauth.access.retain(|_, (g, _)| *g != index);
}

/// The grant behind the request's bearer token, or why there is none (a
/// 401).
fn bearer(inner: &Inner, headers: &HeaderMap) -> Result<usize, &'static str> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("Missing bearer token")?;
    match inner.oauth.access.get(token) {
        Some((g, exp)) if Utc::now() < *exp && !inner.oauth.grants[*g].revoked => Ok(*g),
        Some(_) => Err("Access token expired"),
        None => Err("Invalid access token"),
    }
}

async fn account_numbers(State(sandbox): State<Sandbox>, headers: HeaderMap) -> Response {
    if let Some(r) = faults(&sandbox).await {
        return r;
    }
    let inner = sandbox.lock();
    let g = match bearer(&inner, &headers) {
        Ok(g) => g,
        Err(why) => return api_error(StatusCode::UNAUTHORIZED, why),
    };
    let list: Vec<Value> = inner.oauth.grants[g]
        .accounts
        .iter()
        .map(|a| json!({ "accountNumber": a.number, "hashValue": a.hash }))
        .collect();
    Json(list).into_response()
}

async fn accounts(State(sandbox): State<Sandbox>, headers: HeaderMap) -> Response {
    if let Some(r) = faults(&sandbox).await {
        return r;
    }
    let inner = sandbox.lock();
    let g = match bearer(&inner, &headers) {
        Ok(g) => g,
        Err(why) => return api_error(StatusCode::UNAUTHORIZED, why),
    };
    let grant = &inner.oauth.grants[g];
    let list: Vec<Value> = grant
        .accounts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let cash: Decimal = grant
                .activities
                .iter()
                .filter(|x| x.account == i)
                .map(|x| x.net)
                .sum::<Decimal>()
                + Decimal::new(1_000_000, 2);
            json!({
                "securitiesAccount": {
                    "type": if a.margin { "MARGIN" } else { "CASH" },
                    "accountNumber": a.number,
                    "roundTrips": 0,
                    "isDayTrader": false,
                    "isClosingOnlyRestricted": false,
                    "pfcbFlag": false,
                    "currentBalances": {
                        "cashBalance": cash,
                        "liquidationValue": cash,
                        "cashAvailableForTrading": cash,
                    }
                },
                "aggregatedBalance": { "currentLiquidationValue": cash, "liquidationValue": cash }
            })
        })
        .collect();
    Json(list).into_response()
}

/// The transaction types the Trader API knows (`types` takes one or a
/// comma-separated list).
const TRANSACTION_TYPES: [&str; 15] = [
    "TRADE",
    "RECEIVE_AND_DELIVER",
    "DIVIDEND_OR_INTEREST",
    "ACH_RECEIPT",
    "ACH_DISBURSEMENT",
    "CASH_RECEIPT",
    "CASH_DISBURSEMENT",
    "ELECTRONIC_FUND",
    "WIRE_OUT",
    "WIRE_IN",
    "JOURNAL",
    "MEMORANDUM",
    "MARGIN_CALL",
    "MONEY_MARKET",
    "SMA_ADJUSTMENT",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WindowQuery {
    #[serde(default)]
    start_date: Option<String>,
    #[serde(default)]
    end_date: Option<String>,
    #[serde(default)]
    types: Option<String>,
    #[serde(default)]
    symbol: Option<String>,
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The window and filters of a transactions request, or what is wrong
/// with it (the Trader API's 400).
struct Window {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    types: Vec<String>,
    symbol: Option<String>,
}

fn window(q: Result<Query<WindowQuery>, QueryRejection>) -> Result<Window, String> {
    let Query(q) = q.map_err(|e| format!("Invalid query parameters: {e}"))?;
    let time = |name: &str, v: Option<String>| match v {
        None => Err(format!("{name} is required")),
        Some(v) => parse_time(&v).ok_or_else(|| {
            format!("{name} must be an ISO-8601 date-time, e.g. 2024-03-28T21:10:42.000Z")
        }),
    };
    let start = time("startDate", q.start_date)?;
    let end = time("endDate", q.end_date)?;
    if end < start || end - start > Span::days(365) {
        return Err("The date range must be positive and at most one year".into());
    }
    let types: Vec<String> = match q.types.as_deref().map(str::trim) {
        None | Some("") => return Err("types is required".into()),
        Some(t) => t.split(',').map(|t| t.trim().to_owned()).collect(),
    };
    if let Some(unknown) = types
        .iter()
        .find(|t| !TRANSACTION_TYPES.contains(&t.as_str()))
    {
        return Err(format!(
            "Invalid value for types: {unknown}; expected one of {}",
            TRANSACTION_TYPES.join(", ")
        ));
    }
    Ok(Window {
        start,
        end,
        types,
        symbol: q.symbol.filter(|s| !s.is_empty()),
    })
}

async fn transactions(
    State(sandbox): State<Sandbox>,
    headers: HeaderMap,
    Path(hash): Path<String>,
    q: Result<Query<WindowQuery>, QueryRejection>,
) -> Response {
    if let Some(r) = faults(&sandbox).await {
        return r;
    }
    let w = match window(q) {
        Ok(w) => w,
        Err(detail) => return api_error(StatusCode::BAD_REQUEST, &detail),
    };
    let inner = sandbox.lock();
    let g = match bearer(&inner, &headers) {
        Ok(g) => g,
        Err(why) => return api_error(StatusCode::UNAUTHORIZED, why),
    };
    let grant = &inner.oauth.grants[g];
    let Some(account) = grant.accounts.iter().position(|a| a.hash == hash) else {
        return api_error(StatusCode::NOT_FOUND, "Unknown account hash");
    };
    let list: Vec<Value> = grant
        .activities
        .iter()
        .filter(|x| x.account == account && x.time >= w.start && x.time <= w.end)
        .filter(|x| {
            w.symbol.as_deref().is_none_or(|s| {
                matches!(x.kind, Kind::Buy | Kind::Sell | Kind::Dividend) && x.symbol == s
            })
        })
        .map(|x| x.wire(&grant.accounts[account]))
        .filter(|v| w.types.iter().any(|t| v["type"] == t.as_str()))
        .collect();
    Json(list).into_response()
}

async fn set_settings(
    State(sandbox): State<Sandbox>,
    Json(settings): Json<OAuthSettings>,
) -> StatusCode {
    sandbox.lock().oauth.settings = settings;
    StatusCode::NO_CONTENT
}

async fn grants(State(sandbox): State<Sandbox>) -> Response {
    Json(sandbox.oauth_grants()).into_response()
}

fn with_grant(sandbox: &Sandbox, id: u64, f: impl FnOnce(&mut Inner, usize)) -> StatusCode {
    let mut inner = sandbox.lock();
    match inner.oauth.grants.iter().position(|g| g.id == id) {
        Some(i) => {
            f(&mut inner, i);
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

/// Every access token of the grant expires now.
async fn expire(State(sandbox): State<Sandbox>, Path(id): Path<u64>) -> StatusCode {
    with_grant(&sandbox, id, |inner, i| {
        let past = Utc::now() - Span::seconds(1);
        for (g, exp) in inner.oauth.access.values_mut() {
            if *g == i {
                *exp = past;
            }
        }
    })
}

/// The user revoked access at the provider: refreshes get `invalid_grant`.
async fn revoke_grant(State(sandbox): State<Sandbox>, Path(id): Path<u64>) -> StatusCode {
    with_grant(&sandbox, id, end_grant)
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct WindowAdvance {
    post_pending: bool,
    add: u32,
}

async fn advance(
    State(sandbox): State<Sandbox>,
    Path(id): Path<u64>,
    Json(adv): Json<WindowAdvance>,
) -> StatusCode {
    with_grant(&sandbox, id, |inner, i| {
        advance_grant(inner, i, adv.post_pending, adv.add)
    })
}

pub(crate) fn advance_grant(inner: &mut Inner, index: usize, post_pending: bool, add: u32) {
    let seed = inner.config.seed;
    let grant = &mut inner.oauth.grants[index];
    if post_pending {
        for a in &mut grant.activities {
            a.pending = false;
        }
    }
    for _ in 0..add {
        grant.push(seed, Utc::now(), true);
    }
}

impl Sandbox {
    /// Every OAuth grant, with its tokens and refresh count.
    pub fn oauth_grants(&self) -> Vec<GrantView> {
        self.lock().oauth.grants.iter().map(Grant::view).collect()
    }

    pub fn set_oauth_settings(&self, settings: OAuthSettings) {
        self.lock().oauth.settings = settings;
    }
}
