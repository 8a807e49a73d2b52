//! Committing a completed sync: accounts, transactions, removals, the new
//! cursor and the audit OUTCOME, all in one transaction.

use std::collections::HashMap;

use dashtam_domain::ConnectionId;
use dashtam_domain::audit::AuditEntry;
use dashtam_domain::model::SyncBatch;
use rust_decimal::Decimal;
use serde::Serialize;
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

impl Store {
    /// Commits `batch` for `connection`, provided its cursor is still
    /// `started_from` (else [`StoreError::Conflict`] and nothing is written).
    /// `outcome` is the audit OUTCOME record, committed with the data.
    pub async fn commit_sync(
        &self,
        connection: ConnectionId,
        started_from: Option<&str>,
        batch: &SyncBatch,
        outcome: &AuditEntry,
    ) -> Result<SyncStats, StoreError> {
        let mut stats = SyncStats {
            received: batch.upserts.len() as u64,
            ..SyncStats::default()
        };
        let mut tx = self.pool.begin().await?;

        // The cursor check first: it also locks the connection row, so two
        // syncs of one connection cannot interleave their writes.
        let moved = sqlx::query(include_str!("../queries/advance_cursor.sql"))
            .bind(connection.0)
            .bind(batch.next_cursor.as_deref())
            .bind(started_from)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved != 1 {
            return Err(StoreError::Conflict(
                "the connection's sync cursor moved (or the connection is gone) while syncing"
                    .into(),
            ));
        }

        if !batch.accounts.is_empty() {
            let a = &batch.accounts;
            stats.accounts = sqlx::query(include_str!("../queries/upsert_accounts.sql"))
                .bind(connection.0)
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
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }

        let accounts: HashMap<String, Uuid> =
            sqlx::query_as::<_, (Uuid, String)>(include_str!("../queries/connection_accounts.sql"))
                .bind(connection.0)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(id, provider_id)| (provider_id, id))
                .collect();
        let account_of = |provider_account_id: &str| {
            accounts.get(provider_account_id).copied().ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "provider sent a transaction for unknown account {provider_account_id:?}"
                ))
            })
        };

        for chunk in batch.upserts.chunks(CHUNK) {
            let account_ids = chunk
                .iter()
                .map(|t| account_of(&t.provider_account_id))
                .collect::<Result<Vec<_>, _>>()?;
            stats.upserted += sqlx::query(include_str!("../queries/upsert_transactions.sql"))
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
                .bind(chunk.iter().map(|t| &t.raw).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }

        for chunk in batch.removed.chunks(CHUNK) {
            // A removal for an account we never saw has nothing to remove.
            let (ids, ptids): (Vec<Uuid>, Vec<&str>) = chunk
                .iter()
                .filter_map(|r| {
                    accounts
                        .get(&r.provider_account_id)
                        .map(|id| (*id, r.provider_transaction_id.as_str()))
                })
                .unzip();
            stats.removed += sqlx::query(include_str!("../queries/remove_transactions.sql"))
                .bind(&ids)
                .bind(&ptids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }

        let mut outcome = outcome.clone();
        if let serde_json::Value::Object(map) = &mut outcome.context {
            map.insert(
                "stats".into(),
                serde_json::to_value(stats).unwrap_or_default(),
            );
        }
        audit::append(&mut *tx, &outcome).await?;
        tx.commit().await?;
        Ok(stats)
    }
}
