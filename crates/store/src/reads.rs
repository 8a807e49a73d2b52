//! Read models for the API: accounts, transactions, summaries.

use chrono::{DateTime, NaiveDate, Utc};
use dashtam_domain::{AccountId, ConnectionId, UserId};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::{Store, StoreError};

#[derive(Clone, Debug)]
pub struct Account {
    pub id: Uuid,
    pub connection_id: Uuid,
    pub provider_account_id: String,
    pub name: String,
    pub official_name: Option<String>,
    pub mask: Option<String>,
    pub account_type: String,
    pub account_subtype: Option<String>,
    pub balance_current: Option<Decimal>,
    pub balance_available: Option<Decimal>,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct Transaction {
    pub id: Uuid,
    pub account_id: Uuid,
    pub provider_transaction_id: String,
    /// Decimal string; positive = money in.
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    pub transaction_date: NaiveDate,
    pub posted_date: Option<NaiveDate>,
    pub description: String,
    pub merchant: Option<String>,
    pub category: Option<String>,
    pub txn_type: String,
    pub txn_subtype: Option<String>,
    pub symbol: Option<String>,
    pub quantity: Option<Decimal>,
    pub price: Option<Decimal>,
    pub replaces_transaction_id: Option<Uuid>,
    pub removed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Which transactions [`Store::transactions`] lists; `None`: any. Ranges
/// are inclusive.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransactionFilter {
    pub account: Option<AccountId>,
    pub after: Option<(NaiveDate, Uuid)>,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub min_amount: Option<Decimal>,
    pub max_amount: Option<Decimal>,
}

/// Counts of what a user has, for the demo's summary.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct UserSummary {
    pub connections: i64,
    pub accounts: i64,
    pub transactions: i64,
    pub removed_transactions: i64,
    pub audit_records: i64,
}

impl Store {
    pub async fn accounts(
        &self,
        user: &UserId,
        connection: Option<ConnectionId>,
    ) -> Result<Vec<Account>, StoreError> {
        Ok(sqlx::query_file_as!(
            Account,
            "queries/list_accounts.sql",
            user.as_str(),
            connection.map(|c| c.0)
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// A page of live transactions, newest first, after `filter.after`
    /// (the last row's date and id of the previous page).
    pub async fn transactions(
        &self,
        user: &UserId,
        filter: &TransactionFilter,
        limit: i64,
    ) -> Result<Vec<Transaction>, StoreError> {
        Ok(sqlx::query_file_as!(
            Transaction,
            "queries/list_transactions.sql",
            user.as_str(),
            filter.account.map(|a| a.0),
            filter.after.map(|a| a.0),
            filter.after.map(|a| a.1),
            limit,
            filter.from,
            filter.to,
            filter.min_amount,
            filter.max_amount,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn user_summary(&self, user: &UserId) -> Result<UserSummary, StoreError> {
        Ok(
            sqlx::query_file_as!(UserSummary, "queries/user_summary.sql", user.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
