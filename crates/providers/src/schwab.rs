//! Charles Schwab Trader API (OAuth 2 + date windows).
//!
//! Normalization: accounts are addressed by their opaque `hashValue` (the
//! account number itself is kept only as a 4-digit mask); a transaction's
//! id is its `activityId`; its amount is `netAmount`, whose sign already is
//! ours (positive = cash into the account); `PENDING` maps to pending,
//! `VALID` to settled, `CANCELED`/`INVALID` to cancelled.

use crate::endpoints;
use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use dashtam_domain::Currency;
use dashtam_domain::model::{NormalizedAccount, NormalizedTransaction, TransactionStatus};
use dashtam_domain::ports::{
    LimitScope, LiveSecret, ProviderCredentials, ProviderError, TokenGrant, WindowSyncSource,
};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::http;

#[derive(Clone, Debug)]
pub struct SchwabConfig {
    /// `https://api.schwabapi.com`, or the sandbox provider's address.
    pub base_url: String,
    /// The app key (OAuth client id).
    pub app_key: String,
    /// The app secret.
    pub secret: LiveSecret,
    /// Registered callback URL; must match the authorization request.
    pub redirect_uri: String,
    pub timeout: Duration,
    /// How long a refresh token lives from authorization (Schwab: 7 days).
    pub refresh_token_lifetime: Duration,
}

#[derive(Clone, Debug)]
pub struct SchwabClient {
    http: reqwest::Client,
    config: SchwabConfig,
}

impl SchwabClient {
    pub fn new(config: SchwabConfig) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: http::client(config.timeout)?,
            config,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    async fn send(
        &self,
        endpoint: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<bytes::Bytes, ProviderError> {
        http::send("schwab", endpoint, req)
            .await?
            .map_err(|r| classify(endpoint, r.status, r.retry_after, &r.body))
    }

    /// HTTP Basic with the app key and secret (token and revoke
    /// endpoints), each form-urlencoded first as RFC 6749 §2.3.1 requires
    /// (a secret with `+`, `/` or `=` would otherwise arrive changed).
    fn basic(&self) -> String {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!(
            "{}:{}",
            encode(&self.config.app_key),
            encode(self.config.secret.current().expose_secret())
        );
        format!("Basic {}", STANDARD.encode(pair))
    }

    async fn token(&self, form: &[(&str, &str)]) -> Result<TokenGrant, ProviderError> {
        let req = self
            .http
            .post(self.url(endpoints::schwab::TOKEN))
            .header(reqwest::header::AUTHORIZATION, self.basic())
            .form(form);
        let bytes = self.send(endpoints::schwab::TOKEN, req).await?;
        #[derive(Deserialize)]
        struct Tokens {
            access_token: String,
            #[serde(default)]
            refresh_token: Option<String>,
            expires_in: u64,
        }
        let t: Tokens = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Permanent(format!("token response: {e}")))?;
        Ok(TokenGrant {
            access_token: SecretString::from(t.access_token),
            refresh_token: t.refresh_token.map(SecretString::from),
            access_expires_in: Duration::from_secs(t.expires_in),
        })
    }

    async fn get(
        &self,
        endpoint: &'static str,
        path: &str,
        access_token: &SecretString,
        query: &[(&str, &str)],
    ) -> Result<bytes::Bytes, ProviderError> {
        let req = self
            .http
            .get(self.url(path))
            .bearer_auth(access_token.expose_secret())
            .query(query);
        self.send(endpoint, req).await
    }
}

/// An error body: OAuth's (`error`, `error_description`) from the token
/// endpoints, the Trader API's (`message`, `errors`) from the data ones.
#[derive(Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

impl ErrorBody {
    /// The refresh token is dead and only the user can help: RFC 6749's
    /// `invalid_grant`, or what Schwab has been reported to send for an
    /// expired 7-day refresh token (HTTP 400 `unsupported_token_type` whose
    /// description names `refresh_token_authentication_error`).
    fn dead_grant(&self) -> bool {
        self.error == "invalid_grant"
            || self.error == "refresh_token_authentication_error"
            || (self.error == "unsupported_token_type"
                && self
                    .error_description
                    .contains("refresh_token_authentication_error"))
    }
}

fn classify(
    endpoint: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ProviderError {
    let err: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let errors: Vec<String> = err
        .errors
        .iter()
        .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
        .collect();
    let what = format!(
        "{endpoint}: HTTP {} {} {} {} {}",
        status.as_u16(),
        err.error,
        err.error_description,
        err.message,
        errors.join("; ")
    );
    match status {
        // Schwab's limits are the app's: every call waits.
        StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited {
            retry_after,
            scope: LimitScope::Provider,
        },
        s if s.is_server_error() => ProviderError::Transient(what),
        _ if err.dead_grant() => ProviderError::Unauthorized(what),
        // A 401 on the token endpoint means our app credentials are wrong.
        StatusCode::UNAUTHORIZED if endpoint == endpoints::schwab::TOKEN => {
            ProviderError::Permanent(what)
        }
        StatusCode::UNAUTHORIZED => ProviderError::AccessTokenExpired,
        StatusCode::FORBIDDEN => ProviderError::Unauthorized(what),
        _ => ProviderError::Permanent(what),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountNumber {
    account_number: String,
    hash_value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AccountEnvelope {
    securities_account: SecuritiesAccount,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecuritiesAccount {
    #[serde(rename = "type")]
    account_type: String,
    account_number: String,
    #[serde(default)]
    current_balances: Option<Balances>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Balances {
    #[serde(default)]
    liquidation_value: Option<Decimal>,
    #[serde(default)]
    cash_available_for_trading: Option<Decimal>,
    #[serde(default)]
    cash_balance: Option<Decimal>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActivityWire {
    activity_id: i64,
    time: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(default)]
    trade_date: Option<String>,
    #[serde(default)]
    settlement_date: Option<String>,
    net_amount: Decimal,
    #[serde(default)]
    activity_type: Option<String>,
    #[serde(default)]
    transfer_items: Vec<TransferItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TransferItem {
    instrument: Instrument,
    #[serde(default)]
    amount: Option<Decimal>,
    #[serde(default)]
    price: Option<Decimal>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Instrument {
    asset_type: String,
    #[serde(default)]
    symbol: Option<String>,
}

/// Schwab writes `2024-03-28T21:10:42+0000`; accept RFC 3339 as well.
fn date_of(s: &str) -> Option<NaiveDate> {
    DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%z")
        .or_else(|_| DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|t| t.with_timezone(&Utc).date_naive())
}

fn transaction(account: &str, raw: Box<RawValue>) -> Result<NormalizedTransaction, ProviderError> {
    let a: ActivityWire = serde_json::from_str(raw.get())
        .map_err(|e| ProviderError::Permanent(format!("transaction does not parse: {e}")))?;
    let status = match a.status.as_str() {
        "PENDING" => TransactionStatus::Pending,
        "VALID" => TransactionStatus::Settled,
        _ => TransactionStatus::Cancelled,
    };
    let trade_date = a
        .trade_date
        .as_deref()
        .and_then(date_of)
        .or_else(|| date_of(&a.time))
        .ok_or_else(|| {
            ProviderError::Permanent(format!(
                "activity {} has an unreadable time {:?}",
                a.activity_id, a.time
            ))
        })?;
    let security = a
        .transfer_items
        .iter()
        .find(|t| t.instrument.asset_type != "CURRENCY");
    let txn_type = match a.kind.as_str() {
        "TRADE" => "trade",
        "DIVIDEND_OR_INTEREST" => "income",
        "ACH_RECEIPT" | "CASH_RECEIPT" | "WIRE_IN" => "deposit",
        "ACH_DISBURSEMENT" | "CASH_DISBURSEMENT" | "WIRE_OUT"
            if a.net_amount.abs() < Decimal::new(100, 0) =>
        {
            "fee"
        }
        "ACH_DISBURSEMENT" | "CASH_DISBURSEMENT" | "WIRE_OUT" => "withdrawal",
        "JOURNAL" | "ELECTRONIC_FUND" | "RECEIVE_AND_DELIVER" => "transfer",
        _ => "other",
    };
    Ok(NormalizedTransaction {
        provider_account_id: account.to_owned(),
        provider_transaction_id: a.activity_id.to_string(),
        amount: a.net_amount,
        currency: Currency::parse("USD").map_err(|e| ProviderError::Permanent(e.to_string()))?,
        status,
        transaction_date: trade_date,
        posted_date: match status {
            TransactionStatus::Settled => a.settlement_date.as_deref().and_then(date_of),
            _ => None,
        },
        description: a.description.unwrap_or_else(|| a.kind.clone()),
        merchant: None,
        category: None,
        txn_type: txn_type.to_owned(),
        txn_subtype: a.activity_type.map(|t| t.to_lowercase()),
        symbol: security.and_then(|t| t.instrument.symbol.clone()),
        quantity: security.and_then(|t| t.amount),
        price: security.and_then(|t| t.price),
        pending_provider_transaction_id: None,
        raw: String::from(Box::<str>::from(raw)),
    })
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ProviderError::Permanent(format!("{what} response does not parse: {e}")))
}

/// Schwab's date-time parameters: ISO-8601 with milliseconds, UTC.
fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[async_trait]
impl WindowSyncSource for SchwabClient {
    async fn exchange_code(&self, code: &str) -> Result<TokenGrant, ProviderError> {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.config.redirect_uri),
        ])
        .await
    }

    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, ProviderError> {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ])
        .await
    }

    async fn revoke(&self, credentials: &ProviderCredentials) -> Result<(), ProviderError> {
        let token = credentials
            .refresh_token
            .as_ref()
            .unwrap_or(&credentials.access_token);
        let req = self
            .http
            .post(self.url(endpoints::schwab::REVOKE))
            .header(reqwest::header::AUTHORIZATION, self.basic())
            .form(&[("token", token.expose_secret())]);
        self.send(endpoints::schwab::REVOKE, req).await.map(drop)
    }

    fn refresh_token_lifetime(&self) -> Duration {
        self.config.refresh_token_lifetime
    }

    fn max_window(&self) -> chrono::Duration {
        chrono::Duration::days(365)
    }

    async fn accounts(
        &self,
        access_token: &SecretString,
    ) -> Result<Vec<NormalizedAccount>, ProviderError> {
        let numbers: Vec<AccountNumber> = parse(
            "accountNumbers",
            &self
                .get(
                    endpoints::schwab::ACCOUNT_NUMBERS,
                    endpoints::schwab::ACCOUNT_NUMBERS,
                    access_token,
                    &[],
                )
                .await?,
        )?;
        let details: Vec<AccountEnvelope> = parse(
            "accounts",
            &self
                .get(
                    endpoints::schwab::ACCOUNTS,
                    endpoints::schwab::ACCOUNTS,
                    access_token,
                    &[],
                )
                .await?,
        )?;
        let mut by_number: HashMap<String, SecuritiesAccount> = details
            .into_iter()
            .map(|d| {
                (
                    d.securities_account.account_number.clone(),
                    d.securities_account,
                )
            })
            .collect();
        let usd = Currency::parse("USD").map_err(|e| ProviderError::Permanent(e.to_string()))?;
        Ok(numbers
            .into_iter()
            .map(|n| {
                let detail = by_number.remove(&n.account_number);
                let mask = n
                    .account_number
                    .get(n.account_number.len().saturating_sub(4)..)
                    .map(str::to_owned);
                let subtype = detail.as_ref().map(|d| d.account_type.to_lowercase());
                let balances = detail.and_then(|d| d.current_balances);
                NormalizedAccount {
                    provider_account_id: n.hash_value,
                    name: format!(
                        "Schwab {} …{}",
                        subtype.as_deref().unwrap_or("brokerage"),
                        mask.as_deref().unwrap_or("")
                    ),
                    official_name: None,
                    mask,
                    account_type: "brokerage".into(),
                    account_subtype: subtype,
                    balance_current: balances.as_ref().and_then(|b| b.liquidation_value),
                    balance_available: balances
                        .as_ref()
                        .and_then(|b| b.cash_available_for_trading.or(b.cash_balance)),
                    currency: usd,
                }
            })
            .collect())
    }

    async fn transactions(
        &self,
        access_token: &SecretString,
        account: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<NormalizedTransaction>, ProviderError> {
        let path = format!("/trader/v1/accounts/{account}/transactions");
        let (start, end) = (iso(start), iso(end));
        let bytes = self
            .get(
                endpoints::schwab::TRANSACTIONS,
                &path,
                access_token,
                &[
                    ("startDate", &start),
                    ("endDate", &end),
                    (
                        "types",
                        "TRADE,RECEIVE_AND_DELIVER,DIVIDEND_OR_INTEREST,ACH_RECEIPT,ACH_DISBURSEMENT,CASH_RECEIPT,CASH_DISBURSEMENT,ELECTRONIC_FUND,WIRE_OUT,WIRE_IN,JOURNAL",
                    ),
                ],
            )
            .await?;
        let list: Vec<Box<RawValue>> = parse("transactions", &bytes)?;
        list.into_iter()
            .map(|raw| transaction(account, raw))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activities_normalize_with_schwab_signs_and_statuses() {
        let raw = RawValue::from_string(
            r#"{"activityId": 90000000012, "time": "2026-11-20T14:03:12+0000", "description": "BUY AAPL",
                "accountNumber": "12345678", "type": "TRADE", "status": "VALID", "subAccount": "CASH",
                "tradeDate": "2026-11-20T14:03:12+0000", "settlementDate": "2026-11-21T14:03:12+0000",
                "netAmount": -1895.5, "activityType": "EXECUTION",
                "transferItems": [{"instrument": {"assetType": "CURRENCY", "symbol": "CURRENCY_USD"}, "amount": -1895.5},
                                  {"instrument": {"assetType": "EQUITY", "symbol": "AAPL"}, "amount": 10, "price": 189.55}]}"#
                .to_owned(),
        )
        .unwrap();
        let t = transaction("HASH", raw).unwrap();
        assert_eq!(t.provider_transaction_id, "90000000012");
        assert_eq!(t.amount, Decimal::new(-18955, 1));
        assert_eq!(t.status, TransactionStatus::Settled);
        assert_eq!(t.symbol.as_deref(), Some("AAPL"));
        assert_eq!(t.quantity, Some(Decimal::from(10)));
        assert_eq!(t.txn_type, "trade");
        assert_eq!(t.posted_date, NaiveDate::from_ymd_opt(2026, 11, 21));
        assert!(t.raw.contains("\"activityId\": 90000000012"));
    }

    #[test]
    fn errors_are_classified_for_refresh_and_retry() {
        let c = |status: u16, body: &str| {
            classify(
                "/trader/v1/accounts",
                StatusCode::from_u16(status).unwrap(),
                None,
                body.as_bytes(),
            )
        };
        assert!(matches!(c(401, "{}"), ProviderError::AccessTokenExpired));
        assert!(matches!(
            c(400, r#"{"error":"invalid_grant"}"#),
            ProviderError::Unauthorized(_)
        ));
        assert!(matches!(c(503, ""), ProviderError::Transient(_)));
        assert!(matches!(c(429, ""), ProviderError::RateLimited { .. }));
        assert!(matches!(c(400, "{}"), ProviderError::Permanent(_)));
        // Schwab's reported answer for an expired refresh token.
        assert!(matches!(
            c(
                400,
                r#"{"error":"unsupported_token_type","error_description":"400 Bad Request: \"{\\\"error_description\\\":\\\"Exception while authenticating refresh token [x], refresh_token_authentication_error\\\",\\\"error\\\":\\\"refresh_token_authentication_error\\\"}\""}"#
            ),
            ProviderError::Unauthorized(_)
        ));
        // An unsupported token type for another reason is not a dead grant.
        assert!(matches!(
            c(
                400,
                r#"{"error":"unsupported_token_type","error_description":"token type hint"}"#
            ),
            ProviderError::Permanent(_)
        ));
        // Trader API errors keep their message and errors.
        match c(
            400,
            r#"{"message":"Bad Request","errors":["types is required"]}"#,
        ) {
            ProviderError::Permanent(what) => assert!(what.contains("types is required"), "{what}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn basic_credentials_are_form_encoded() {
        let client = SchwabClient::new(SchwabConfig {
            base_url: "http://127.0.0.1:1".into(),
            app_key: "app key".into(),
            secret: LiveSecret::new(SecretString::from("s3c+r/t=")),
            redirect_uri: "https://127.0.0.1/cb".into(),
            timeout: Duration::from_secs(1),
            refresh_token_lifetime: Duration::from_secs(1),
        })
        .unwrap();
        let b64 = client.basic().strip_prefix("Basic ").unwrap().to_owned();
        let pair = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(pair, "app+key:s3c%2Br%2Ft%3D");
    }
}
