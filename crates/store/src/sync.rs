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
use dashtam_domain::ConnectionId;
use dashtam_domain::audit::AuditEntry;
use dashtam_domain::model::{NormalizedAccount, SyncBatch};
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
        let current: Option<Option<String>> =
            sqlx::query_scalar(include_str!("../queries/lock_connection_cursor.sql"))
                .bind(connection.0)
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
        let accounts =
            sqlx::query_as::<_, (Uuid, String)>(include_str!("../queries/connection_accounts.sql"))
                .bind(connection.0)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(id, provider_id)| (provider_id, id))
                .collect();
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
            let account_ids = chunk
                .iter()
                .map(|t| self.account_of(&t.provider_account_id))
                .collect::<Result<Vec<_>, _>>()?;
            self.stats.upserted += sqlx::query(include_str!("../queries/upsert_transactions.sql"))
                .bind(chunk.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
                .bind(&account_ids)
                .bind(
                    chunk
                        .iter()
                        .map(|t| t.provider_transaction_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(chunk.iter().map(|t| t.amount).collect::<Vec<_>>())
                .bind(
                    chunk
                        .iter()
                        .map(|t| t.currency.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(chunk.iter().map(|t| t.status.as_str()).collect::<Vec<_>>())
                .bind(chunk.iter().map(|t| t.transaction_date).collect::<Vec<_>>())
                .bind(chunk.iter().map(|t| t.posted_date).collect::<Vec<_>>())
                .bind(
                    chunk
                        .iter()
                        .map(|t| t.description.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    chunk
                        .iter()
                        .map(|t| t.merchant.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    chunk
                        .iter()
                        .map(|t| t.category.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    chunk
                        .iter()
                        .map(|t| t.txn_type.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    chunk
                        .iter()
                        .map(|t| t.txn_subtype.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    chunk
                        .iter()
                        .map(|t| t.symbol.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(chunk.iter().map(|t| t.quantity).collect::<Vec<_>>())
                .bind(chunk.iter().map(|t| t.price).collect::<Vec<_>>())
                .bind(
                    chunk
                        .iter()
                        .map(|t| t.pending_provider_transaction_id.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(chunk.iter().map(|t| t.raw.as_str()).collect::<Vec<_>>())
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
            self.stats.removed += sqlx::query(include_str!("../queries/remove_transactions.sql"))
                .bind(&ids)
                .bind(&ptids)
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
        let moved = sqlx::query(include_str!("../queries/advance_cursor.sql"))
            .bind(self.connection.0)
            .bind(next_cursor)
            .bind(self.started_from.as_deref())
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
        self.stats.accounts += sqlx::query(include_str!("../queries/upsert_accounts.sql"))
            .bind(self.connection.0)
            .bind(a.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
            .bind(
                a.iter()
                    .map(|x| x.provider_account_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(a.iter().map(|x| x.name.as_str()).collect::<Vec<_>>())
            .bind(
                a.iter()
                    .map(|x| x.official_name.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(a.iter().map(|x| x.mask.as_deref()).collect::<Vec<_>>())
            .bind(
                a.iter()
                    .map(|x| x.account_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                a.iter()
                    .map(|x| x.account_subtype.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                a.iter()
                    .map(|x| x.balance_current)
                    .collect::<Vec<Option<Decimal>>>(),
            )
            .bind(
                a.iter()
                    .map(|x| x.balance_available)
                    .collect::<Vec<Option<Decimal>>>(),
            )
            .bind(a.iter().map(|x| x.currency.as_str()).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        self.accounts =
            sqlx::query_as::<_, (Uuid, String)>(include_str!("../queries/connection_accounts.sql"))
                .bind(self.connection.0)
                .fetch_all(&mut *self.tx)
                .await?
                .into_iter()
                .map(|(id, provider_id)| (provider_id, id))
                .collect();
        Ok(())
    }
}
