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

/// A page size from the query: `default` when absent, else 1 to `max`.
pub(super) fn page_size(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid_field(
            "limit",
            format!("must be between 1 and {max}"),
        ))
    }
}

/// Keeps the first `limit` of `rows` (fetched with `limit + 1`) and returns
/// the cursor of the last kept one if more followed.
pub(super) fn next_page<T>(
    rows: &mut Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> String,
) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(cursor)
    } else {
        None
    }
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
    let limit = page_size(q.limit, 100, 1000)?;
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
    let next_cursor = next_page(&mut data, limit, encode_cursor);
    Ok(Json(Page { data, next_cursor }))
}
