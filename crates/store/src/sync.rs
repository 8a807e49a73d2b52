//! Writing a sync: everything in one short transaction at the end.
//!
//! A sync collects every page from the provider first, with no transaction
//! open (a slow provider must not hold a pool connection, row locks or the
//! database's xmin horizon, which would stop autovacuum cleaning the
//! constantly churning `jobs` table). Rows wait in memory up to a chunk; a
//! full chunk is *staged* ([`Stage::put`]: one short insert into the
//! unlogged `sync_staging` table), so a first sync of a large history holds
//! at most one chunk in memory. [`Store::commit_sync`] then opens one
//! transaction that checks the connection's cursor is still the one the
//! sync started from, replays the staged chunks in order and writes the
//! rest (accounts, transactions, removals), moves the cursor, appends the
//! audit OUTCOME and, last, lets the job's [`Fence`] mark the job succeeded
//! if its claim is still valid: rows, cursor, OUTCOME and the job's success
//! become visible together, or not at all.

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

/// Rows a sync holds in memory before it stages them.
pub const STAGE_AT: usize = CHUNK;

/// What one staged chunk holds: transactions then removals, already folded
/// (no id is both upserted and removed in one chunk), so replaying chunks in
/// order gives the provider's order.
#[derive(serde::Serialize, serde::Deserialize)]
struct Chunk {
    upserts: Vec<dashtam_domain::model::NormalizedTransaction>,
    removed: Vec<dashtam_domain::model::RemovedTransaction>,
}

/// The chunks one sync pass staged. Dropped without a commit, it deletes
/// them (in the background); a crash empties the unlogged table, and the
/// scheduler's prune cycle removes what is left of a dead process's pass.
pub struct Stage {
    store: Store,
    id: Uuid,
    chunks: i32,
    committed: bool,
}

impl Store {
    /// A new, empty stage for one sync pass.
    pub fn stage(&self) -> Stage {
        Stage {
            store: self.clone(),
            id: Uuid::now_v7(),
            chunks: 0,
            committed: false,
        }
    }

    /// Deletes stages older than `age` (their process died mid-sync).
    pub async fn prune_stages(&self, age: std::time::Duration) -> Result<u64, StoreError> {
        Ok(sqlx::query(include_str!("../queries/prune_stages.sql"))
            .bind(age.as_secs_f64())
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

impl Stage {
    /// Stages (and drains) the batch's transactions and removals: one
    /// short insert, no transaction held.
    pub async fn put(&mut self, batch: &mut SyncBatch) -> Result<(), StoreError> {
        if batch.pending_rows() == 0 {
            return Ok(());
        }
        batch.dedupe_upserts();
        let chunk = Chunk {
            upserts: std::mem::take(&mut batch.upserts),
            removed: std::mem::take(&mut batch.removed),
        };
        let body = serde_json::to_vec(&chunk)
            .map_err(|e| StoreError::Corrupt(format!("a chunk does not serialize: {e}")))?;
        sqlx::query(include_str!("../queries/stage_chunk.sql"))
            .bind(self.id)
            .bind(self.chunks)
            .bind(body)
            .execute(&self.store.pool)
            .await?;
        self.chunks += 1;
        Ok(())
    }

    /// Chunks staged so far.
    pub fn chunks(&self) -> i32 {
        self.chunks
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if self.committed || self.chunks == 0 {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pool = self.store.pool.clone();
            let id = self.id;
            rt.spawn(async move {
                let _ = sqlx::query(include_str!("../queries/drop_stage.sql"))
                    .bind(id)
                    .execute(&pool)
                    .await;
            });
        }
    }
}

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
    /// Commits a whole sync (see the module docs): `stage` and then `batch`
    /// hold every page the provider returned since `started_from`; `batch`
    /// the accounts and the `next_cursor`. [`StoreError::Conflict`] if
    /// another sync moved the cursor first, a staged chunk is missing (a
    /// crash emptied the stage) or the job's claim is gone; nothing is
    /// written then.
    pub async fn commit_sync(
        &self,
        connection: ConnectionId,
        started_from: Option<&str>,
        stage: &mut Stage,
        batch: &mut SyncBatch,
        outcome: &AuditEntry,
        fence: &dyn Fence,
    ) -> Result<SyncStats, StoreError> {
        let mut tx = self.begin_sync(connection, started_from).await?;
        tx.write_accounts(&batch.accounts).await?;
        for n in 0..stage.chunks {
            let body: Option<Vec<u8>> =
                sqlx::query_scalar(include_str!("../queries/staged_chunk.sql"))
                    .bind(stage.id)
                    .bind(n)
                    .fetch_optional(&mut *tx.tx)
                    .await?;
            let body = body.ok_or_else(|| {
                StoreError::Conflict(format!(
                    "staged chunk {n} of this sync is gone (the database restarted); syncing again"
                ))
            })?;
            let chunk: Chunk = serde_json::from_slice(&body)
                .map_err(|e| StoreError::Corrupt(format!("a staged chunk does not parse: {e}")))?;
            let mut staged = SyncBatch {
                upserts: chunk.upserts,
                removed: chunk.removed,
                ..SyncBatch::default()
            };
            tx.write(&mut staged).await?;
        }
        tx.write(batch).await?;
        if stage.chunks > 0 {
            sqlx::query(include_str!("../queries/drop_stage.sql"))
                .bind(stage.id)
                .execute(&mut *tx.tx)
                .await?;
        }
        let stats = tx
            .commit(batch.next_cursor.as_deref(), outcome, fence)
            .await?;
        stage.committed = true;
        Ok(stats)
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
    /// Writes (and drains) the batch's transactions and removals.
    async fn write(&mut self, batch: &mut SyncBatch) -> Result<(), StoreError> {
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
