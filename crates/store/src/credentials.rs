//! Token material: single-flight refresh, revocation, key rotation.
//!
//! [`Store::lock_credentials`] opens a transaction holding the connection's
//! row lock; whoever holds it is the only one in the whole cluster who may
//! call the provider's token endpoint for that connection. The caller checks
//! [`CredentialLease::version`] first: if a newer version than the one it
//! found stale exists, someone else refreshed and it just uses the result.

use chrono::{DateTime, Utc};
use dashtam_domain::ConnectionId;
use dashtam_domain::audit::AuditEntry;
use dashtam_domain::model::{ConnectionStatus, ProviderKind};
use dashtam_domain::ports::ProviderCredentials;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Store, StoreError, audit};

/// An open transaction holding one connection's refresh lock. Dropping it
/// releases the lock and changes nothing.
pub struct CredentialLease {
    tx: Transaction<'static, Postgres>,
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

    /// Takes the connection's refresh lock (waiting for another holder);
    /// `None` if the connection does not exist.
    pub async fn lock_credentials(
        &self,
        connection: ConnectionId,
    ) -> Result<Option<CredentialLease>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            provider: String,
            status: String,
            credentials: Option<Vec<u8>>,
            credentials_version: i64,
            access_token_expires_at: Option<DateTime<Utc>>,
            refresh_token_expires_at: Option<DateTime<Utc>>,
        }
        let mut tx = self.pool.begin().await?;
        let row: Option<Row> = sqlx::query_as(include_str!("../queries/lock_credentials.sql"))
            .bind(connection.0)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (provider, status) = crate::connections::kind_and_status(&row.provider, &row.status)?;
        Ok(Some(CredentialLease {
            connection,
            provider,
            status,
            credentials: row
                .credentials
                .map(|b| self.open(connection, &b))
                .transpose()?,
            version: row.credentials_version,
            access_token_expires_at: row.access_token_expires_at,
            refresh_token_expires_at: row.refresh_token_expires_at,
            tx,
        }))
    }

    /// Re-encrypts up to `batch` blobs written under another key than the
    /// active one; returns how many. Call until it returns 0.
    pub async fn rotate_credentials(&self, batch: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(Uuid, Vec<u8>)> =
            sqlx::query_as(include_str!("../queries/credentials_to_rotate.sql"))
                .bind(self.cipher.active_key())
                .bind(batch)
                .fetch_all(&mut *tx)
                .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut blobs = Vec::with_capacity(rows.len());
        for (id, blob) in rows {
            let connection = ConnectionId(id);
            let credentials = self.open(connection, &blob)?;
            ids.push(id);
            blobs.push(self.seal(connection, &credentials)?);
        }
        sqlx::query(include_str!("../queries/rewrite_credentials.sql"))
            .bind(&ids)
            .bind(&blobs)
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

    /// Stores refreshed credentials (version + 1) with the audit OUTCOME,
    /// and releases the lock; returns the new version.
    pub async fn store(
        mut self,
        store: &Store,
        credentials: &ProviderCredentials,
        access_token_expires_at: Option<DateTime<Utc>>,
        outcome: &AuditEntry,
    ) -> Result<i64, StoreError> {
        let blob = store.seal(self.connection, credentials)?;
        let version: i64 = sqlx::query_scalar(include_str!("../queries/store_credentials.sql"))
            .bind(self.connection.0)
            .bind(&blob)
            .bind(access_token_expires_at)
            .bind(self.refresh_token_expires_at)
            .fetch_one(&mut *self.tx)
            .await?;
        audit::append(&mut *self.tx, outcome).await?;
        self.tx.commit().await?;
        Ok(version)
    }

    /// Forgets the tokens for good (after they were revoked at the
    /// provider) with the audit OUTCOME; the connection becomes `revoked`.
    pub async fn wipe(mut self, outcome: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(include_str!("../queries/wipe_credentials.sql"))
            .bind(self.connection.0)
            .execute(&mut *self.tx)
            .await?;
        audit::append(&mut *self.tx, outcome).await?;
        self.tx.commit().await?;
        Ok(())
    }

    /// The refresh token is dead: the connection needs the user again.
    pub async fn require_reauth(mut self, outcome: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(include_str!("../queries/set_connection_status.sql"))
            .bind(self.connection.0)
            .bind(ConnectionStatus::ReauthRequired.as_str())
            .execute(&mut *self.tx)
            .await?;
        audit::append(&mut *self.tx, outcome).await?;
        self.tx.commit().await?;
        Ok(())
    }
}
