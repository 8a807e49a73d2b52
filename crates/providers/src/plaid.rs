//! Plaid `/transactions/sync` (cursor style).

use crate::endpoints;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use dashtam_domain::Currency;
use dashtam_domain::model::{
    NormalizedAccount, NormalizedTransaction, RemovedTransaction, TransactionStatus,
};
use dashtam_domain::ports::{
    LimitScope, Linked, LiveSecret, ProviderCredentials, ProviderError, SyncPage,
    TransactionSyncSource,
};

use crate::http::{self, Refusal};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Clone, Debug)]
pub struct PlaidConfig {
    /// `https://production.plaid.com`, or the sandbox provider's address.
    pub base_url: String,
    pub client_id: String,
    pub secret: LiveSecret,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct PlaidClient {
    http: reqwest::Client,
    config: PlaidConfig,
}

impl PlaidClient {
    pub fn new(config: PlaidConfig) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: http::client(config.timeout)?,
            config,
        })
    }

    pub(crate) async fn post(
        &self,
        path: &'static str,
        body: &serde_json::Value,
    ) -> Result<bytes::Bytes, ProviderError> {
        let url = format!("{}{path}", self.config.base_url.trim_end_matches('/'));
        let req = self
            .http
            .post(&url)
            .header("PLAID-CLIENT-ID", &self.config.client_id)
            .header("PLAID-SECRET", self.config.secret.current().expose_secret())
            .header("Plaid-Version", "2020-09-14")
            .json(body);
        let Refusal {
            status,
            retry_after,
            body: bytes,
        } = match http::send("plaid", path, req).await? {
            Ok(bytes) => return Ok(bytes),
            Err(refusal) => refusal,
        };
        let err: PlaidErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
        Err(classify(path, status, retry_after, err))
    }
}

#[derive(Debug, Default, Deserialize)]
struct PlaidErrorBody {
    #[serde(default)]
    error_type: String,
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    error_message: String,
}

fn classify(
    path: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    err: PlaidErrorBody,
) -> ProviderError {
    let what = format!(
        "POST {path}: HTTP {} {} {}: {}",
        status.as_u16(),
        err.error_type,
        err.error_code,
        err.error_message
    );
    match (status, err.error_code.as_str()) {
        // Plaid's 429s name the endpoint, not the scope, and carry no
        // Retry-After. The per-client limits are kept by our budget
        // (`budgets.providers.plaid`), so a 429 is an Item's own limit
        // (e.g. 50 /transactions/sync calls a minute): it holds back that
        // connection, not every Plaid job.
        (StatusCode::TOO_MANY_REQUESTS, _) => ProviderError::RateLimited {
            retry_after,
            scope: LimitScope::Connection,
        },
        (s, _) if s.is_server_error() => ProviderError::Transient(what),
        (_, "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION") => {
            ProviderError::MutationDuringPagination
        }
        (_, "ITEM_LOGIN_REQUIRED" | "INVALID_ACCESS_TOKEN" | "ACCESS_NOT_GRANTED") => {
            ProviderError::Unauthorized(what)
        }
        // Plaid reports some transient states as 400s.
        (_, "PRODUCT_NOT_READY" | "INSTITUTION_DOWN" | "INSTITUTION_NOT_RESPONDING") => {
            ProviderError::Transient(what)
        }
        _ => ProviderError::Permanent(what),
    }
}

#[derive(Deserialize)]
struct SyncResponse {
    accounts: Vec<AccountWire>,
    added: Vec<Box<RawValue>>,
    modified: Vec<Box<RawValue>>,
    removed: Vec<RemovedWire>,
    next_cursor: String,
    has_more: bool,
}

#[derive(Deserialize)]
struct RemovedWire {
    transaction_id: String,
    #[serde(default)]
    account_id: Option<String>,
}

#[derive(Deserialize)]
struct AccountWire {
    account_id: String,
    balances: Balances,
    mask: Option<String>,
    name: String,
    official_name: Option<String>,
    #[serde(rename = "type")]
    account_type: String,
    subtype: Option<String>,
}

#[derive(Deserialize)]
struct Balances {
    available: Option<Decimal>,
    current: Option<Decimal>,
    iso_currency_code: Option<String>,
    unofficial_currency_code: Option<String>,
}

#[derive(Deserialize)]
struct TransactionWire {
    account_id: String,
    amount: Decimal,
    iso_currency_code: Option<String>,
    unofficial_currency_code: Option<String>,
    date: NaiveDate,
    authorized_date: Option<NaiveDate>,
    name: Option<String>,
    merchant_name: Option<String>,
    pending: bool,
    pending_transaction_id: Option<String>,
    personal_finance_category: Option<Category>,
    transaction_id: String,
}

#[derive(Deserialize)]
struct Category {
    primary: String,
    detailed: String,
}

fn currency(
    iso: Option<&str>,
    unofficial: Option<&str>,
    what: &str,
) -> Result<Currency, ProviderError> {
    let code = iso.or(unofficial).ok_or_else(|| {
        ProviderError::Permanent(format!(
            "{what} has neither iso nor unofficial currency code"
        ))
    })?;
    Currency::parse(code).map_err(|e| ProviderError::Permanent(format!("{what}: {e}")))
}

fn account(a: AccountWire) -> Result<NormalizedAccount, ProviderError> {
    let account_type = match (a.account_type.as_str(), a.subtype.as_deref()) {
        ("depository", Some("savings" | "money market" | "cd")) => "savings",
        ("depository", _) => "checking",
        ("credit", _) => "credit_card",
        ("investment" | "brokerage", Some(s)) if s.contains("ira") => "ira",
        ("investment" | "brokerage", _) => "brokerage",
        ("loan", _) => "loan",
        _ => "other",
    };
    Ok(NormalizedAccount {
        currency: currency(
            a.balances.iso_currency_code.as_deref(),
            a.balances.unofficial_currency_code.as_deref(),
            &format!("account {}", a.account_id),
        )?,
        provider_account_id: a.account_id,
        name: a.name,
        official_name: a.official_name,
        mask: a.mask,
        account_type: account_type.to_owned(),
        account_subtype: a.subtype,
        balance_current: a.balances.current,
        balance_available: a.balances.available,
    })
}

/// Maps one Plaid transaction into the normalized model. Plaid's amounts
/// are positive for money out; ours are positive for money in.
fn transaction(raw: Box<RawValue>) -> Result<NormalizedTransaction, ProviderError> {
    let t: TransactionWire = serde_json::from_str(raw.get())
        .map_err(|e| ProviderError::Permanent(format!("transaction does not parse: {e}")))?;
    let txn_type = match t
        .personal_finance_category
        .as_ref()
        .map(|c| c.primary.as_str())
    {
        Some("INCOME") => "income",
        Some("TRANSFER_IN" | "TRANSFER_OUT") => "transfer",
        Some("BANK_FEES") => "fee",
        Some("LOAN_PAYMENTS") => "payment",
        _ if t.amount.is_sign_negative() => "deposit",
        _ => "purchase",
    };
    Ok(NormalizedTransaction {
        currency: currency(
            t.iso_currency_code.as_deref(),
            t.unofficial_currency_code.as_deref(),
            &format!("transaction {}", t.transaction_id),
        )?,
        provider_account_id: t.account_id,
        provider_transaction_id: t.transaction_id,
        amount: -t.amount,
        status: if t.pending {
            TransactionStatus::Pending
        } else {
            TransactionStatus::Settled
        },
        transaction_date: t.authorized_date.unwrap_or(t.date),
        posted_date: (!t.pending).then_some(t.date),
        description: t
            .name
            .or_else(|| t.merchant_name.clone())
            .unwrap_or_default(),
        merchant: t.merchant_name,
        category: t
            .personal_finance_category
            .map(|c| c.detailed.to_lowercase()),
        txn_type: txn_type.to_owned(),
        txn_subtype: None,
        symbol: None,
        quantity: None,
        price: None,
        pending_provider_transaction_id: t.pending_transaction_id,
        raw: String::from(Box::<str>::from(raw)),
    })
}

#[async_trait]
impl TransactionSyncSource for PlaidClient {
    async fn exchange_public_token(&self, public_token: &str) -> Result<Linked, ProviderError> {
        #[derive(Deserialize)]
        struct Exchanged {
            access_token: String,
            item_id: String,
        }
        let bytes = self
            .post(
                endpoints::plaid::EXCHANGE,
                &serde_json::json!({ "public_token": public_token }),
            )
            .await?;
        let e: Exchanged = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Permanent(format!("exchange response: {e}")))?;
        Ok(Linked {
            credentials: ProviderCredentials {
                access_token: SecretString::from(e.access_token),
                refresh_token: None,
            },
            item_id: e.item_id,
        })
    }

    async fn accounts(
        &self,
        credentials: &ProviderCredentials,
    ) -> Result<Vec<NormalizedAccount>, ProviderError> {
        #[derive(Deserialize)]
        struct AccountsGet {
            accounts: Vec<AccountWire>,
        }
        let bytes = self
            .post(
                endpoints::plaid::ACCOUNTS,
                &serde_json::json!({ "access_token": credentials.access_token.expose_secret() }),
            )
            .await?;
        let r: AccountsGet = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Permanent(format!("/accounts/get response: {e}")))?;
        r.accounts.into_iter().map(account).collect()
    }

    async fn register_webhook(
        &self,
        credentials: &ProviderCredentials,
        url: &str,
    ) -> Result<(), ProviderError> {
        self.post(
            endpoints::plaid::WEBHOOK_UPDATE,
            &serde_json::json!({
                "access_token": credentials.access_token.expose_secret(),
                "webhook": url,
            }),
        )
        .await
        .map(drop)
    }

    async fn sync_page(
        &self,
        credentials: &ProviderCredentials,
        cursor: Option<&str>,
        count: u32,
    ) -> Result<SyncPage, ProviderError> {
        let mut body = serde_json::json!({
            "access_token": credentials.access_token.expose_secret(),
            "count": count.clamp(1, 500),
        });
        if let Some(c) = cursor {
            body["cursor"] = c.into();
        }
        let bytes = self
            .post(endpoints::plaid::TRANSACTIONS_SYNC, &body)
            .await?;
        let r: SyncResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Permanent(format!("/transactions/sync response: {e}")))?;
        let accounts = r
            .accounts
            .into_iter()
            .map(account)
            .collect::<Result<Vec<_>, _>>()?;
        // Plaid omits `account_id` on some removals; such a removal applies
        // to whichever account holds the id, which only one can.
        let removed = r
            .removed
            .into_iter()
            .flat_map(|rm| match rm.account_id {
                Some(a) => vec![RemovedTransaction {
                    provider_account_id: a,
                    provider_transaction_id: rm.transaction_id,
                }],
                None => accounts
                    .iter()
                    .map(|a| RemovedTransaction {
                        provider_account_id: a.provider_account_id.clone(),
                        provider_transaction_id: rm.transaction_id.clone(),
                    })
                    .collect(),
            })
            .collect();
        Ok(SyncPage {
            added: r
                .added
                .into_iter()
                .map(transaction)
                .collect::<Result<_, _>>()?,
            modified: r
                .modified
                .into_iter()
                .map(transaction)
                .collect::<Result<_, _>>()?,
            removed,
            accounts,
            next_cursor: r.next_cursor,
            has_more: r.has_more,
        })
    }

    async fn revoke(&self, credentials: &ProviderCredentials) -> Result<(), ProviderError> {
        self.post(
            endpoints::plaid::REMOVE,
            &serde_json::json!({ "access_token": credentials.access_token.expose_secret() }),
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn plaid_txn(amount: &str, pending: bool) -> Box<RawValue> {
        RawValue::from_string(format!(
            r#"{{"account_id":"a1","amount":{amount},"iso_currency_code":null,
            "unofficial_currency_code":"USD","date":"2026-10-02","authorized_date":"2026-10-01",
            "name":"COFFEE","merchant_name":"Blue Bottle","pending":{pending},
            "pending_transaction_id":null,"transaction_id":"t1",
            "personal_finance_category":{{"primary":"FOOD_AND_DRINK","detailed":"FOOD_AND_DRINK_COFFEE"}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn sign_is_flipped_and_amounts_are_exact() {
        let t = transaction(plaid_txn("12.34", false)).unwrap();
        assert_eq!(t.amount, dec("-12.34"));
        let t = transaction(plaid_txn("-2500.10", false)).unwrap();
        assert_eq!(t.amount, dec("2500.10"));
        // Binary floating point would turn this into 0.30000000000000004.
        let t = transaction(plaid_txn("0.3", false)).unwrap();
        assert_eq!(t.amount, dec("-0.3"));
    }

    #[test]
    fn dates_status_and_currency_fallback() {
        let t = transaction(plaid_txn("1", false)).unwrap();
        assert_eq!(t.currency.as_str(), "USD");
        assert_eq!(t.status, TransactionStatus::Settled);
        assert_eq!(t.transaction_date.to_string(), "2026-10-01");
        assert_eq!(t.posted_date.unwrap().to_string(), "2026-10-02");
        assert_eq!(t.category.as_deref(), Some("food_and_drink_coffee"));
        assert_eq!(t.txn_type, "purchase");
        let p = transaction(plaid_txn("1", true)).unwrap();
        assert_eq!(p.status, TransactionStatus::Pending);
        assert_eq!(p.posted_date, None);
        assert!(p.raw.contains(r#""name":"COFFEE""#));
    }

    #[test]
    fn errors_are_classified() {
        let body = |code: &str| PlaidErrorBody {
            error_code: code.into(),
            ..PlaidErrorBody::default()
        };
        assert!(matches!(
            classify("/x", StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(3)), body("")),
            ProviderError::RateLimited { retry_after: Some(d), scope: LimitScope::Connection }
                if d.as_secs() == 3
        ));
        assert!(matches!(
            classify("/x", StatusCode::BAD_GATEWAY, None, body("")),
            ProviderError::Transient(_)
        ));
        assert!(matches!(
            classify(
                "/x",
                StatusCode::BAD_REQUEST,
                None,
                body("TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION")
            ),
            ProviderError::MutationDuringPagination
        ));
        assert!(matches!(
            classify(
                "/x",
                StatusCode::BAD_REQUEST,
                None,
                body("ITEM_LOGIN_REQUIRED")
            ),
            ProviderError::Unauthorized(_)
        ));
        assert!(matches!(
            classify("/x", StatusCode::BAD_REQUEST, None, body("INVALID_FIELD")),
            ProviderError::Permanent(_)
        ));
    }
}
