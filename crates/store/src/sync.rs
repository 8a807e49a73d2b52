//! Writing a sync: one transaction from the first page to the new cursor.
//!
//! [`Store::begin_sync`] checks the connection's cursor is still the one the
//! sync started from (and keeps the row from being deleted); [`SyncTx::write`] bulk-writes the
//! pages collected so far; [`SyncTx::commit`] moves the cursor and appends the
//! audit OUTCOME in the same transaction. Dropping a `SyncTx` rolls all of it
//! back, so a sync that fails or restarts mid-way leaves nothing behind.

use std::collections::HashMap;

use dashtam_domain::ConnectionId;
use dashtam_domain::audit::AuditEntry;
use dashtam_domain::model::{NormalizedAccount, SyncBatch};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{Postgres, Transaction};
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

/// An open sync transaction (see the module docs).
pub struct SyncTx {
    tx: Transaction<'static, Postgres>,
    connection: ConnectionId,
    /// provider account id → our account id.
    accounts: HashMap<String, Uuid>,
    /// What was last written for each account, to skip unchanged rewrites.
    written: Vec<NormalizedAccount>,
    stats: SyncStats,
    started_from: Option<String>,
}

impl Store {
    /// Opens the transaction a sync writes in, provided the connection's
    /// cursor is still `started_from` (else [`StoreError::Conflict`]).
    pub async fn begin_sync(
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
            written: Vec::new(),
            stats: SyncStats::default(),
            started_from: started_from.map(str::to_owned),
        })
    }
}

impl SyncTx {
    pub fn stats(&self) -> SyncStats {
        self.stats
    }

    /// Writes (and drains) the batch's transactions and removals, and its
    /// accounts if they changed since the last write.
    pub async fn write(&mut self, batch: &mut SyncBatch) -> Result<(), StoreError> {
        if batch.accounts != self.written {
            self.write_accounts(&batch.accounts).await?;
            self.written = batch.accounts.clone();
        }
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

    /// Moves the cursor, appends `outcome` (with the counts) and commits.
    pub async fn commit(
        mut self,
        next_cursor: Option<&str>,
        outcome: &AuditEntry,
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
