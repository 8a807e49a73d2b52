//! Accounts and transactions (read-only).

use axum::Json;
use axum::extract::{Query, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Datelike, NaiveDate};
use dashtam_domain::{AccountId, ConnectionId};
use dashtam_store::reads::{Transaction, TransactionFilter};

use super::views::{AccountOut, TransactionOut};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::parse_id;

use super::shared::{next_page, page_size, query, storable_year};
use crate::openapi::Problems;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(accounts))
        .routes(routes!(transactions))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AccountsQuery {
    /// Only this connection's accounts.
    #[param(value_type = Option<Uuid>)]
    connection_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Page<T> {
    data: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The caller's accounts (of one connection, or all).
#[utoipa::path(
    get, path = "/accounts", tag = "data", params(AccountsQuery),
    responses((status = 200, body = Page<AccountOut>), Problems),
)]
async fn accounts(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<AccountsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<AccountOut>>, ApiError> {
    let q = query(q)?;
    let connection: Option<ConnectionId> = q
        .connection_id
        .as_deref()
        .map(|c| parse_id("connection_id", c))
        .transpose()?;
    let data = state.store.accounts(&caller.user, connection).await?;
    Ok(Json(Page {
        data: data.into_iter().map(AccountOut::from).collect(),
        next_cursor: None,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TransactionsQuery {
    /// Only this account's transactions.
    #[param(value_type = Option<Uuid>)]
    account_id: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The previous page's `next_cursor`.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// Transaction date on or after (`YYYY-MM-DD`).
    #[param(value_type = Option<NaiveDate>)]
    from: Option<String>,
    /// Transaction date on or before (`YYYY-MM-DD`).
    #[param(value_type = Option<NaiveDate>)]
    to: Option<String>,
    /// Amount at least this (a decimal string; positive = money in).
    #[param(value_type = Option<String>, example = "-100.00")]
    min_amount: Option<String>,
    /// Amount at most this (a decimal string; positive = money in).
    #[param(value_type = Option<String>, example = "0")]
    max_amount: Option<String>,
}

fn parse_field<T: std::str::FromStr>(
    field: &str,
    raw: Option<&str>,
    what: &str,
) -> Result<Option<T>, ApiError> {
    raw.map(|v| {
        v.parse()
            .map_err(|_| ApiError::invalid_field(field, format!("{v:?} is not {what}")))
    })
    .transpose()
}

/// Both ends of an inclusive range, in order.
fn range<T: PartialOrd>(
    (low_name, low): (&str, Option<T>),
    high_name: &str,
    high: Option<T>,
) -> Result<(Option<T>, Option<T>), ApiError> {
    match (&low, &high) {
        (Some(l), Some(h)) if l > h => Err(ApiError::invalid_field(
            low_name,
            format!("must not be greater than {high_name}"),
        )),
        _ => Ok((low, high)),
    }
}

/// A `YYYY-MM-DD` query parameter.
fn parse_date(field: &str, raw: Option<&str>) -> Result<Option<NaiveDate>, ApiError> {
    let date = parse_field::<NaiveDate>(field, raw, "a date (YYYY-MM-DD)")?;
    match date {
        Some(d) if !storable_year(d.year()) => Err(ApiError::invalid_field(
            field,
            format!("{d} is out of range (years 1 to 9999)"),
        )),
        other => Ok(other),
    }
}

fn encode_cursor(t: &Transaction) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", t.transaction_date, t.id))
}

fn decode_cursor(raw: &str) -> Result<(NaiveDate, Uuid), ApiError> {
    let bad = || ApiError::invalid_field("cursor", "is not a cursor this API issued");
    let text =
        String::from_utf8(URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?).map_err(|_| bad())?;
    let (date, id) = text.split_once('|').ok_or_else(bad)?;
    let date: NaiveDate = date.parse().map_err(|_| bad())?;
    if !storable_year(date.year()) {
        return Err(bad());
    }
    Ok((date, id.parse().map_err(|_| bad())?))
}

/// The caller's live transactions, newest first (by transaction date),
/// with cursor pagination and optional date and amount ranges.
#[utoipa::path(
    get, path = "/transactions", tag = "data", params(TransactionsQuery),
    responses((status = 200, body = Page<TransactionOut>), Problems),
)]
async fn transactions(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<TransactionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<TransactionOut>>, ApiError> {
    let q = query(q)?;
    let limit = page_size(q.limit, 100, 1000)?;
    let account: Option<AccountId> = q
        .account_id
        .as_deref()
        .map(|a| parse_id("account_id", a))
        .transpose()?;
    let (from, to) = range(
        ("from", parse_date("from", q.from.as_deref())?),
        "to",
        parse_date("to", q.to.as_deref())?,
    )?;
    let amount = "a decimal amount";
    let (min_amount, max_amount) = range(
        (
            "min_amount",
            parse_field::<Decimal>("min_amount", q.min_amount.as_deref(), amount)?,
        ),
        "max_amount",
        parse_field("max_amount", q.max_amount.as_deref(), amount)?,
    )?;
    let filter = TransactionFilter {
        account,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
        from,
        to,
        min_amount,
        max_amount,
    };
    let mut data = state
        .store
        .transactions(&caller.user, &filter, limit + 1)
        .await?;
    let next_cursor = next_page(&mut data, limit, encode_cursor);
    Ok(Json(Page {
        data: data.into_iter().map(TransactionOut::from).collect(),
        next_cursor,
    }))
}
