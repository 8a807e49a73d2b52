//! Writing a sync: everything in one short transaction at the end.
//!
//! A sync collects every page from the provider first, with no transaction
//! open (a slow provider must not hold a pool connection, row locks or the
//! database's xmin horizon, which would stop autovacuum cleaning the
//! constantly churning `jobs` table). [`Store::commit_sync`] then opens one
//! transaction that checks the connection's cursor is still the one the
//! sync started from, bulk-writes accounts, transactions and removals, moves
//! the cursor, appends the audit OUTCOME and, last, lets the job's
//! [`Fence`] mark the job succeeded if its claim is still valid: rows,
//! cursor, OUTCOME and the job's success become visible together, or not at
//! all.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::NaiveDate;
use dashtam_domain::ConnectionId;
use dashtam_domain::audit::AuditEntry;
use dashtam_domain::model::{NormalizedAccount, NormalizedTransaction, SyncBatch};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::{Store, StoreError, audit};

/// Rows per bulk statement: large enough to amortize round trips, small
/// enough to keep each statement's memory modest.
const CHUNK: usize = 5_000;

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SyncStats {
    pub accounts: u64,
    /// Transactions received (added or modified).
    pub received: u64,
    /// Rows inserted or changed.
    pub upserted: u64,
    pub removed: u64,
}

/// The last statement of a sync's transaction: the job that ran the sync
/// marks itself succeeded there, provided its claim is still valid.
#[async_trait]
pub trait Fence: Send + Sync {
    /// `Ok(false)`: the claim is gone (rescued, or undone by a database
    /// crash); the sync's transaction is rolled back.
    async fn complete_in(
        &self,
        conn: &mut PgConnection,
        stats: &SyncStats,
    ) -> Result<bool, sqlx::Error>;
}

/// The open transaction of [`Store::commit_sync`].
struct SyncTx {
    tx: Transaction<'static, Postgres>,
    connection: ConnectionId,
    /// provider account id → our account id.
    accounts: HashMap<String, Uuid>,
    stats: SyncStats,
    started_from: Option<String>,
}

impl Store {
    /// Commits a whole sync (see the module docs): `batch` holds every page
    /// the provider returned since `started_from`, and its `next_cursor`.
    /// [`StoreError::Conflict`] if another sync moved the cursor first or
    /// the job's claim is gone; nothing is written then.
    pub async fn commit_sync(
        &self,
        connection: ConnectionId,
        started_from: Option<&str>,
        batch: &mut SyncBatch,
        outcome: &AuditEntry,
        fence: &dyn Fence,
    ) -> Result<SyncStats, StoreError> {
        let mut tx = self.begin_sync(connection, started_from).await?;
        tx.write(batch).await?;
        tx.commit(batch.next_cursor.as_deref(), outcome, fence)
            .await
    }

    async fn begin_sync(
        &self,
        connection: ConnectionId,
        started_from: Option<&str>,
    ) -> Result<SyncTx, StoreError> {
        let mut tx = self.pool.begin().await?;
        let current = sqlx::query_file_scalar!("queries/lock_connection_cursor.sql", connection.0)
            .fetch_optional(&mut *tx)
            .await?;
        match current {
            None => {
                return Err(StoreError::Conflict(
                    "the connection no longer exists".into(),
                ));
            }
            Some(c) if c.as_deref() != started_from => {
                return Err(StoreError::Conflict(
                    "the connection's sync cursor moved since this sync started".into(),
                ));
            }
            Some(_) => {}
        }
        let accounts = connection_accounts(&mut tx, connection).await?;
        Ok(SyncTx {
            tx,
            connection,
            accounts,
            stats: SyncStats::default(),
            started_from: started_from.map(str::to_owned),
        })
    }
}

impl SyncTx {
    /// Writes (and drains) the batch's accounts, transactions and removals.
    async fn write(&mut self, batch: &mut SyncBatch) -> Result<(), StoreError> {
        self.write_accounts(&batch.accounts).await?;
        batch.dedupe_upserts();
        self.stats.received += batch.upserts.len() as u64;
        for chunk in batch.upserts.chunks(CHUNK) {
            let c = TransactionColumns::of(chunk, |p| self.account_of(p))?;
            self.stats.upserted += sqlx::query_file!(
                "queries/upsert_transactions.sql",
                &c.id,
                &c.account_id,
                &c.provider_transaction_id as _,
                &c.amount,
                &c.currency as _,
                &c.status as _,
                &c.transaction_date,
                &c.posted_date as _,
                &c.description as _,
                &c.merchant as _,
                &c.category as _,
                &c.txn_type as _,
                &c.txn_subtype as _,
                &c.symbol as _,
                &c.quantity as _,
                &c.price as _,
                &c.pending_provider_transaction_id as _,
                &c.raw as _,
            )
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        }
        batch.upserts.clear();

        for chunk in batch.removed.chunks(CHUNK) {
            // A removal for an account we never saw has nothing to remove.
            let (ids, ptids): (Vec<Uuid>, Vec<&str>) = chunk
                .iter()
                .filter_map(|r| {
                    self.accounts
                        .get(&r.provider_account_id)
                        .map(|id| (*id, r.provider_transaction_id.as_str()))
                })
                .unzip();
            self.stats.removed +=
                sqlx::query_file!("queries/remove_transactions.sql", &ids, &ptids as _)
                    .execute(&mut *self.tx)
                    .await?
                    .rows_affected();
        }
        batch.removed.clear();
        Ok(())
    }

    /// Moves the cursor, appends `outcome` (with the counts), completes the
    /// job through `fence` and commits.
    async fn commit(
        mut self,
        next_cursor: Option<&str>,
        outcome: &AuditEntry,
        fence: &dyn Fence,
    ) -> Result<SyncStats, StoreError> {
        let moved = sqlx::query_file!(
            "queries/advance_cursor.sql",
            self.connection.0,
            next_cursor,
            self.started_from.as_deref(),
        )
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(StoreError::Conflict(
                "another sync of this connection committed first".into(),
            ));
        }
        let mut outcome = outcome.clone();
        if let serde_json::Value::Object(map) = &mut outcome.context {
            map.insert(
                "stats".into(),
                serde_json::to_value(self.stats).unwrap_or_default(),
            );
        }
        audit::append(&mut *self.tx, &outcome).await?;
        if !fence.complete_in(&mut self.tx, &self.stats).await? {
            return Err(StoreError::Conflict(
                "this run's claim on the job was lost (rescued or undone by a crash); \
                 another run owns the job"
                    .into(),
            ));
        }
        self.tx.commit().await?;
        Ok(self.stats)
    }

    fn account_of(&self, provider_account_id: &str) -> Result<Uuid, StoreError> {
        self.accounts
            .get(provider_account_id)
            .copied()
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "provider sent a transaction for unknown account {provider_account_id:?}"
                ))
            })
    }

    async fn write_accounts(&mut self, a: &[NormalizedAccount]) -> Result<(), StoreError> {
        if a.is_empty() {
            return Ok(());
        }
        let c = AccountColumns::of(a);
        self.stats.accounts += sqlx::query_file!(
            "queries/upsert_accounts.sql",
            self.connection.0,
            &c.id,
            &c.provider_account_id as _,
            &c.name as _,
            &c.official_name as _,
            &c.mask as _,
            &c.account_type as _,
            &c.account_subtype as _,
            &c.balance_current as _,
            &c.balance_available as _,
            &c.currency as _,
        )
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        self.accounts = connection_accounts(&mut self.tx, self.connection).await?;
        Ok(())
    }
}

/// provider account id → our account id, of the connection's accounts.
async fn connection_accounts(
    conn: &mut PgConnection,
    connection: ConnectionId,
) -> Result<HashMap<String, Uuid>, sqlx::Error> {
    Ok(
        sqlx::query_file!("queries/connection_accounts.sql", connection.0)
            .fetch_all(conn)
            .await?
            .into_iter()
            .map(|r| (r.provider_account_id, r.id))
            .collect(),
    )
}

/// A chunk of transactions as the columns `upsert_transactions.sql`
/// unnests, one named field per column. (Arrays of borrowed text are bound
/// `as _`: the macros check arrays of text against `&[String]` only, and
/// copying every string of a sync to satisfy them would cost a hot path;
/// the statement's own casts fix their types.)
struct TransactionColumns<'a> {
    id: Vec<Uuid>,
    account_id: Vec<Uuid>,
    provider_transaction_id: Vec<&'a str>,
    amount: Vec<Decimal>,
    currency: Vec<&'a str>,
    status: Vec<&'a str>,
    transaction_date: Vec<NaiveDate>,
    posted_date: Vec<Option<NaiveDate>>,
    description: Vec<&'a str>,
    merchant: Vec<Option<&'a str>>,
    category: Vec<Option<&'a str>>,
    txn_type: Vec<&'a str>,
    txn_subtype: Vec<Option<&'a str>>,
    symbol: Vec<Option<&'a str>>,
    quantity: Vec<Option<Decimal>>,
    price: Vec<Option<Decimal>>,
    pending_provider_transaction_id: Vec<Option<&'a str>>,
    raw: Vec<&'a str>,
}

impl<'a> TransactionColumns<'a> {
    fn of(
        rows: &'a [NormalizedTransaction],
        account_of: impl Fn(&str) -> Result<Uuid, StoreError>,
    ) -> Result<Self, StoreError> {
        let col = |f: fn(&'a NormalizedTransaction) -> &'a str| rows.iter().map(f).collect();
        let opt =
            |f: fn(&'a NormalizedTransaction) -> Option<&'a str>| rows.iter().map(f).collect();
        Ok(Self {
            id: rows.iter().map(|_| Uuid::now_v7()).collect(),
            account_id: rows
                .iter()
                .map(|t| account_of(&t.provider_account_id))
                .collect::<Result<_, _>>()?,
            provider_transaction_id: col(|t| &t.provider_transaction_id),
            amount: rows.iter().map(|t| t.amount).collect(),
            currency: col(|t| t.currency.as_str()),
            status: col(|t| t.status.as_str()),
            transaction_date: rows.iter().map(|t| t.transaction_date).collect(),
            posted_date: rows.iter().map(|t| t.posted_date).collect(),
            description: col(|t| &t.description),
            merchant: opt(|t| t.merchant.as_deref()),
            category: opt(|t| t.category.as_deref()),
            txn_type: col(|t| &t.txn_type),
            txn_subtype: opt(|t| t.txn_subtype.as_deref()),
            symbol: opt(|t| t.symbol.as_deref()),
            quantity: rows.iter().map(|t| t.quantity).collect(),
            price: rows.iter().map(|t| t.price).collect(),
            pending_provider_transaction_id: opt(|t| t.pending_provider_transaction_id.as_deref()),
            raw: col(|t| &t.raw),
        })
    }
}

/// Accounts as the columns `upsert_accounts.sql` unnests.
struct AccountColumns<'a> {
    id: Vec<Uuid>,
    provider_account_id: Vec<&'a str>,
    name: Vec<&'a str>,
    official_name: Vec<Option<&'a str>>,
    mask: Vec<Option<&'a str>>,
    account_type: Vec<&'a str>,
    account_subtype: Vec<Option<&'a str>>,
    balance_current: Vec<Option<Decimal>>,
    balance_available: Vec<Option<Decimal>>,
    currency: Vec<&'a str>,
}

impl<'a> AccountColumns<'a> {
    fn of(rows: &'a [NormalizedAccount]) -> Self {
        let col = |f: fn(&'a NormalizedAccount) -> &'a str| rows.iter().map(f).collect();
        let opt = |f: fn(&'a NormalizedAccount) -> Option<&'a str>| rows.iter().map(f).collect();
        Self {
            id: rows.iter().map(|_| Uuid::now_v7()).collect(),
            provider_account_id: col(|a| &a.provider_account_id),
            name: col(|a| &a.name),
            official_name: opt(|a| a.official_name.as_deref()),
            mask: opt(|a| a.mask.as_deref()),
            account_type: col(|a| &a.account_type),
            account_subtype: opt(|a| a.account_subtype.as_deref()),
            balance_current: rows.iter().map(|a| a.balance_current).collect(),
            balance_available: rows.iter().map(|a| a.balance_available).collect(),
            currency: col(|a| a.currency.as_str()),
        }
    }
}
