//! What clients see: the API's own response types, each made from a store
//! or queue row (`From<Row>`), so a column added to a table reaches clients
//! only when it is added here.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// A connection as its owner sees it: never any token material.
#[derive(Serialize, ToSchema)]
#[schema(as = Connection)]
pub struct ConnectionOut {
    pub id: Uuid,
    pub user_id: String,
    pub provider: String,
    pub status: String,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub refresh_token_expires_at: Option<DateTime<Utc>>,
    pub has_synced: bool,
    pub last_sync_at: Option<DateTime<Utc>>,
    /// Set once the refresh token is about to expire (or the provider says
    /// access ends soon): the client should ask the user to authorize again.
    pub reauth_warned_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<dashtam_store::connections::Connection> for ConnectionOut {
    fn from(c: dashtam_store::connections::Connection) -> Self {
        Self {
            id: c.id,
            user_id: c.user_id,
            provider: c.provider,
            status: c.status,
            access_token_expires_at: c.access_token_expires_at,
            refresh_token_expires_at: c.refresh_token_expires_at,
            has_synced: c.has_synced,
            last_sync_at: c.last_sync_at,
            reauth_warned_at: c.reauth_warned_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// An account at a provider, under one of the caller's connections.
#[derive(Serialize, ToSchema)]
#[schema(as = Account)]
pub struct AccountOut {
    pub id: Uuid,
    pub connection_id: Uuid,
    pub provider_account_id: String,
    pub name: String,
    pub official_name: Option<String>,
    pub mask: Option<String>,
    pub account_type: String,
    pub account_subtype: Option<String>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub balance_current: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub balance_available: Option<Decimal>,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<dashtam_store::reads::Account> for AccountOut {
    fn from(a: dashtam_store::reads::Account) -> Self {
        Self {
            id: a.id,
            connection_id: a.connection_id,
            provider_account_id: a.provider_account_id,
            name: a.name,
            official_name: a.official_name,
            mask: a.mask,
            account_type: a.account_type,
            account_subtype: a.account_subtype,
            balance_current: a.balance_current,
            balance_available: a.balance_available,
            currency: a.currency,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// A normalized transaction.
#[derive(Serialize, ToSchema)]
#[schema(as = Transaction)]
pub struct TransactionOut {
    pub id: Uuid,
    pub account_id: Uuid,
    pub provider_transaction_id: String,
    /// Decimal string; positive = money in.
    #[serde(with = "rust_decimal::serde::str")]
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
    #[serde(with = "rust_decimal::serde::str_option")]
    pub quantity: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub price: Option<Decimal>,
    pub replaces_transaction_id: Option<Uuid>,
    pub removed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<dashtam_store::reads::Transaction> for TransactionOut {
    fn from(t: dashtam_store::reads::Transaction) -> Self {
        Self {
            id: t.id,
            account_id: t.account_id,
            provider_transaction_id: t.provider_transaction_id,
            amount: t.amount,
            currency: t.currency,
            status: t.status,
            transaction_date: t.transaction_date,
            posted_date: t.posted_date,
            description: t.description,
            merchant: t.merchant,
            category: t.category,
            txn_type: t.txn_type,
            txn_subtype: t.txn_subtype,
            symbol: t.symbol,
            quantity: t.quantity,
            price: t.price,
            replaces_transaction_id: t.replaces_transaction_id,
            removed_at: t.removed_at,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// Jobs per state in one queue, and whether it is paused.
#[derive(Serialize, ToSchema)]
#[schema(as = QueueStats)]
pub struct QueueStatsOut {
    pub queue: String,
    pub paused: bool,
    pub states: std::collections::BTreeMap<String, i64>,
}

impl From<dashtam_queue::ops::QueueStats> for QueueStatsOut {
    fn from(q: dashtam_queue::ops::QueueStats) -> Self {
        Self {
            queue: q.queue,
            paused: q.paused,
            states: q.states,
        }
    }
}

/// Who leads the scheduler.
#[derive(Serialize, ToSchema)]
#[schema(as = Lease)]
pub struct LeaseOut {
    pub holder: String,
    pub term: i64,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Not expired yet.
    pub live: bool,
}

impl From<dashtam_queue::leadership::Lease> for LeaseOut {
    fn from(l: dashtam_queue::leadership::Lease) -> Self {
        Self {
            holder: l.holder,
            term: l.term,
            acquired_at: l.acquired_at,
            expires_at: l.expires_at,
            live: l.live,
        }
    }
}

/// One processed tick of a scheduler cycle.
#[derive(Serialize, ToSchema)]
#[schema(as = TickRecord)]
pub struct TickOut {
    pub cycle: String,
    pub tick: DateTime<Utc>,
    pub leader: String,
    pub term: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub enqueued: i64,
    pub flagged: i64,
}

impl From<dashtam_queue::leadership::TickRecord> for TickOut {
    fn from(t: dashtam_queue::leadership::TickRecord) -> Self {
        Self {
            cycle: t.cycle,
            tick: t.tick,
            leader: t.leader,
            term: t.term,
            started_at: t.started_at,
            finished_at: t.finished_at,
            enqueued: t.enqueued,
            flagged: t.flagged,
        }
    }
}
