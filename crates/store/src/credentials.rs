//! Token material: single-flight refresh, revocation, key rotation.
//!
//! [`Store::lease_credentials`] takes the connection's token lease: a row
//! lease (holder and expiry on the connection row), not a transaction, so
//! nothing stays open in the database while the holder waits on the
//! provider's token or revocation endpoint. Whoever holds an unexpired lease
//! is the only one in the whole cluster who may call those endpoints for
//! that connection. The holder checks [`CredentialLease::version`] first: if
//! a newer version than the one it found stale exists, someone else
//! refreshed and it just uses the result. Writes under the lease (new
//! tokens, the wipe, `reauth_required`) give it up in the same short
//! transaction, and refuse to write if it expired and was taken over.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dashtam_domain::ConnectionId;
use dashtam_domain::audit::AuditEntry;
use dashtam_domain::model::{ConnectionStatus, ProviderKind};
use dashtam_domain::ports::ProviderCredentials;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Store, StoreError, audit};

/// One connection's token lease. Dropping it gives the lease up (in the
/// background) and changes nothing else.
pub struct CredentialLease {
    store: Store,
    holder: Uuid,
    /// Given up already (by a write, or explicitly).
    done: bool,
    connection: ConnectionId,
    pub provider: ProviderKind,
    pub status: ConnectionStatus,
    pub credentials: Option<ProviderCredentials>,
    pub version: i64,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub refresh_token_expires_at: Option<DateTime<Utc>>,
}

impl Store {
    pub(crate) fn seal(
        &self,
        connection: ConnectionId,
        credentials: &ProviderCredentials,
    ) -> Result<Vec<u8>, StoreError> {
        let plaintext = serde_json::to_vec(credentials)
            .map_err(|e| StoreError::Corrupt(format!("credentials do not serialize: {e}")))?;
        Ok(self.cipher.encrypt(connection.0.as_bytes(), &plaintext)?)
    }

    pub(crate) fn open(
        &self,
        connection: ConnectionId,
        blob: &[u8],
    ) -> Result<ProviderCredentials, StoreError> {
        let plaintext = self.cipher.decrypt(connection.0.as_bytes(), blob)?;
        serde_json::from_slice(&plaintext)
            .map_err(|_| StoreError::Corrupt("credentials do not parse".into()))
    }

    /// Takes the connection's token lease for `ttl` (longer than any
    /// provider call the holder makes), waiting while someone else holds
    /// it; `None` if the connection does not exist.
    pub async fn lease_credentials(
        &self,
        connection: ConnectionId,
        ttl: Duration,
    ) -> Result<Option<CredentialLease>, StoreError> {
        let holder = Uuid::now_v7();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        // A holder gives the lease up when it is done, or it lapses after
        // `ttl`: waiting longer than that means something is wrong.
        let give_up = tokio::time::Instant::now() + ttl + Duration::from_secs(5);
        let mut pause = Duration::from_millis(20);
        loop {
            let row = sqlx::query_file!(
                "queries/lease_credentials.sql",
                connection.0,
                holder,
                ttl_ms
            )
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row {
                let (provider, status) =
                    crate::connections::kind_and_status(&row.provider, &row.status)?;
                let mut lease = CredentialLease {
                    store: self.clone(),
                    holder,
                    done: false,
                    connection,
                    provider,
                    status,
                    credentials: None,
                    version: row.credentials_version,
                    access_token_expires_at: row.access_token_expires_at,
                    refresh_token_expires_at: row.refresh_token_expires_at,
                };
                // On a decryption error the lease is dropped (and given up).
                lease.credentials = row
                    .credentials
                    .map(|b| self.open(connection, &b))
                    .transpose()?;
                return Ok(Some(lease));
            }
            let exists = sqlx::query_file_scalar!("queries/connection_exists.sql", connection.0)
                .fetch_one(&self.pool)
                .await?;
            if !exists {
                return Ok(None);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(StoreError::Conflict(
                    "the connection's token lease stayed taken; try again later".into(),
                ));
            }
            let jitter = Duration::from_millis(fastrand::u64(0..=pause.as_millis() as u64 / 2));
            tokio::time::sleep(pause + jitter).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Re-encrypts up to `batch` blobs written under another key than the
    /// active one; returns how many. Call until it returns 0.
    pub async fn rotate_credentials(&self, batch: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query_file!(
            "queries/credentials_to_rotate.sql",
            self.cipher.active_key(),
            batch
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut blobs = Vec::with_capacity(rows.len());
        for row in rows {
            let connection = ConnectionId(row.id);
            let blob = row
                .credentials
                .ok_or_else(|| StoreError::Corrupt("connection has no credentials".into()))?;
            let credentials = self.open(connection, &blob)?;
            ids.push(row.id);
            blobs.push(self.seal(connection, &credentials)?);
        }
        sqlx::query_file!("queries/rewrite_credentials.sql", &ids, &blobs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }
}

impl CredentialLease {
    pub fn connection(&self) -> ConnectionId {
        self.connection
    }

    /// Opens the transaction a write under the lease commits in, giving the
    /// lease up in it; [`StoreError::Conflict`] if the lease lapsed and was
    /// taken over (then nothing may be written).
    async fn write_tx(&mut self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.store.pool.begin().await?;
        let released = sqlx::query_file!(
            "queries/release_token_lease.sql",
            self.connection.0,
            self.holder
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if released != 1 {
            return Err(StoreError::Conflict(
                "the token lease lapsed and was taken over; not writing".into(),
            ));
        }
        Ok(tx)
    }

    /// Stores refreshed credentials (version + 1) with the audit OUTCOME,
    /// and gives the lease up; returns the new version.
    pub async fn store(
        mut self,
        credentials: &ProviderCredentials,
        access_token_expires_at: Option<DateTime<Utc>>,
        outcome: &AuditEntry,
    ) -> Result<i64, StoreError> {
        let blob = self.store.seal(self.connection, credentials)?;
        let mut tx = self.write_tx().await?;
        let version = sqlx::query_file_scalar!(
            "queries/store_credentials.sql",
            self.connection.0,
            blob,
            access_token_expires_at,
            self.refresh_token_expires_at,
        )
        .fetch_one(&mut *tx)
        .await?;
        audit::append(&mut *tx, outcome).await?;
        tx.commit().await?;
        self.done = true;
        Ok(version)
    }

    /// Forgets the tokens for good (after they were revoked at the
    /// provider) with the audit OUTCOME; the connection becomes `revoked`.
    pub async fn wipe(mut self, outcome: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query_file!("queries/wipe_credentials.sql", self.connection.0)
            .execute(&mut *tx)
            .await?;
        audit::append(&mut *tx, outcome).await?;
        tx.commit().await?;
        self.done = true;
        Ok(())
    }

    /// The refresh token is dead: the connection needs the user again.
    pub async fn require_reauth(mut self, outcome: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query_file!(
            "queries/set_connection_status.sql",
            self.connection.0,
            ConnectionStatus::ReauthRequired.as_str()
        )
        .execute(&mut *tx)
        .await?;
        audit::append(&mut *tx, outcome).await?;
        tx.commit().await?;
        self.done = true;
        Ok(())
    }

    /// Gives the lease up without writing anything.
    pub async fn release(mut self) -> Result<(), StoreError> {
        self.done = true;
        sqlx::query_file!(
            "queries/release_token_lease.sql",
            self.connection.0,
            self.holder
        )
        .execute(&self.store.pool)
        .await?;
        Ok(())
    }
}

impl Drop for CredentialLease {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped without a word (an error path, a cancelled task): give the
        // lease up in the background rather than make others wait for it to
        // lapse.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let pool = self.store.pool.clone();
            let (connection, holder) = (self.connection.0, self.holder);
            rt.spawn(async move {
                if let Err(e) =
                    sqlx::query_file!("queries/release_token_lease.sql", connection, holder)
                        .execute(&pool)
                        .await
                {
                    tracing::warn!(error = %e, "could not give a token lease up; it lapses by itself");
                }
            });
        }
    }
}
