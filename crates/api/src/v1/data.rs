//! Accounts and transactions (read-only).

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::NaiveDate;
use dashtam_domain::{AccountId, ConnectionId};
use dashtam_store::reads::{Account, Transaction};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::parse_id;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/accounts", get(accounts))
        .route("/transactions", get(transactions))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsQuery {
    connection_id: Option<String>,
}

#[derive(Serialize)]
struct Page<T> {
    data: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

pub(super) fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

async fn accounts(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<AccountsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Account>>, ApiError> {
    let q = query(q)?;
    let connection: Option<ConnectionId> = q
        .connection_id
        .as_deref()
        .map(|c| parse_id("connection_id", c))
        .transpose()?;
    let data = state.store.accounts(&caller.user, connection).await?;
    Ok(Json(Page {
        data,
        next_cursor: None,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransactionsQuery {
    account_id: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

fn encode_cursor(t: &Transaction) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", t.transaction_date, t.id))
}

fn decode_cursor(raw: &str) -> Result<(NaiveDate, Uuid), ApiError> {
    let bad = || ApiError::invalid_field("cursor", "is not a cursor this API issued");
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?).map_err(|_| bad())?;
    let (date, id) = text.split_once('|').ok_or_else(bad)?;
    Ok((
        date.parse().map_err(|_| bad())?,
        id.parse().map_err(|_| bad())?,
    ))
}

async fn transactions(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<TransactionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Transaction>>, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "must be between 1 and 1000",
        ));
    }
    let account: Option<AccountId> = q
        .account_id
        .as_deref()
        .map(|a| parse_id("account_id", a))
        .transpose()?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut data = state
        .store
        .transactions(&caller.user, account, after, limit + 1)
        .await?;
    let next_cursor = if data.len() as i64 > limit {
        data.truncate(usize::try_from(limit).unwrap_or(0));
        data.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(Page { data, next_cursor }))
}
