//! Provider connections and their (encrypted) credentials.

use chrono::{DateTime, Utc};
use dashtam_domain::audit::{AuditAction, AuditEntry, AuditOutcome, AuditPhase};
use dashtam_domain::model::{ConnectionStatus, ProviderKind};
use dashtam_domain::ports::ProviderCredentials;
use dashtam_domain::{ConnectionId, UserId};
use uuid::Uuid;

use crate::{Store, StoreError, audit};

/// A connection's row, without any token material (the API shows it as
/// `ConnectionOut`).
#[derive(Clone, Debug)]
pub struct Connection {
    pub id: Uuid,
    pub user_id: String,
    pub provider: String,
    pub status: String,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub refresh_token_expires_at: Option<DateTime<Utc>>,
    pub has_synced: bool,
    pub last_sync_at: Option<DateTime<Utc>>,
    /// Set once the refresh token is about to expire: the client should ask
    /// the user to authorize again.
    pub reauth_warned_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a sync needs to know about its connection.
#[derive(Debug)]
pub struct SyncState {
    pub provider: ProviderKind,
    pub status: ConnectionStatus,
    pub credentials: ProviderCredentials,
    /// Goes up by one whenever the tokens change.
    pub credentials_version: i64,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
}

/// One connection of a bulk import.
pub struct Imported {
    pub credentials: ProviderCredentials,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub refresh_token_expires_at: Option<DateTime<Utc>>,
}

pub struct NewConnection<'a> {
    pub user: &'a UserId,
    pub provider: ProviderKind,
    pub credentials: &'a ProviderCredentials,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub refresh_token_expires_at: Option<DateTime<Utc>>,
    /// The provider's id for the connection (Plaid's `item_id`), which its
    /// webhooks name.
    pub provider_item_id: Option<&'a str>,
    pub correlation_id: Option<String>,
}

impl Store {
    /// Stores a new active connection with its credentials encrypted, and
    /// audits it, in one transaction.
    pub async fn create_connection(
        &self,
        new: NewConnection<'_>,
    ) -> Result<Connection, StoreError> {
        let id = ConnectionId::new();
        let blob = self.seal(id, new.credentials)?;
        let mut tx = self.pool.begin().await?;
        let conn = sqlx::query_file_as!(
            Connection,
            "queries/insert_connection.sql",
            id.0,
            new.user.as_str(),
            new.provider.as_str(),
            ConnectionStatus::Active.as_str(),
            blob,
            new.access_token_expires_at,
            new.refresh_token_expires_at,
            new.provider_item_id,
        )
        .fetch_one(&mut *tx)
        .await?;
        audit::append(
            &mut *tx,
            &AuditEntry {
                action: AuditAction::ConnectionCreated,
                phase: AuditPhase::Outcome,
                outcome: AuditOutcome::Succeeded,
                actor: format!("user:{}", new.user),
                resource_type: "connection",
                resource_id: id.to_string(),
                correlation_id: new.correlation_id,
                reason: None,
                context: serde_json::json!({ "provider": new.provider.as_str() }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(conn)
    }

    /// Bulk import of active connections (another system's, or a
    /// benchmark's): one statement, one audit record for the batch. Returns
    /// the new ids in order.
    pub async fn import_connections(
        &self,
        user: &UserId,
        provider: ProviderKind,
        rows: &[Imported],
    ) -> Result<Vec<ConnectionId>, StoreError> {
        let ids: Vec<ConnectionId> = rows.iter().map(|_| ConnectionId::new()).collect();
        let blobs = ids
            .iter()
            .zip(rows)
            .map(|(id, row)| self.seal(*id, &row.credentials))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.pool.begin().await?;
        sqlx::query_file!(
            "queries/import_connections.sql",
            &ids.iter().map(|i| i.0).collect::<Vec<_>>(),
            &vec![user.as_str(); rows.len()] as _,
            &vec![provider.as_str(); rows.len()] as _,
            &blobs,
            &rows
                .iter()
                .map(|r| r.access_token_expires_at)
                .collect::<Vec<_>>() as _,
            &rows
                .iter()
                .map(|r| r.refresh_token_expires_at)
                .collect::<Vec<_>>() as _,
        )
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut *tx,
            &AuditEntry {
                action: AuditAction::ConnectionCreated,
                phase: AuditPhase::Outcome,
                outcome: AuditOutcome::Succeeded,
                actor: format!("user:{user}"),
                resource_type: "connection",
                resource_id: "import".into(),
                correlation_id: None,
                reason: Some(format!("bulk import of {} connections", rows.len())),
                context: serde_json::json!({ "provider": provider.as_str(), "count": rows.len() }),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// The connection, if it exists and belongs to `user`.
    pub async fn connection(
        &self,
        user: &UserId,
        id: ConnectionId,
    ) -> Result<Option<Connection>, StoreError> {
        Ok(sqlx::query_file_as!(
            Connection,
            "queries/get_connection.sql",
            id.0,
            user.as_str()
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Every user's connections (operators only), newest first, at most
    /// `limit`, of `status` if given.
    pub async fn all_connections(
        &self,
        status: Option<ConnectionStatus>,
        limit: i64,
    ) -> Result<Vec<Connection>, StoreError> {
        Ok(sqlx::query_file_as!(
            Connection,
            "queries/all_connections.sql",
            status.map(ConnectionStatus::as_str),
            limit
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn connections(&self, user: &UserId) -> Result<Vec<Connection>, StoreError> {
        Ok(
            sqlx::query_file_as!(Connection, "queries/list_connections.sql", user.as_str())
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Provider, status, decrypted credentials and cursor, for a sync.
    pub async fn sync_state(&self, id: ConnectionId) -> Result<Option<SyncState>, StoreError> {
        let row = sqlx::query_file!("queries/load_sync_state.sql", id.0)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (provider, status) = kind_and_status(&row.provider, &row.status)?;
        let blob = row
            .credentials
            .ok_or_else(|| StoreError::Corrupt("connection has no credentials".into()))?;
        Ok(Some(SyncState {
            provider,
            status,
            credentials: self.open(id, &blob)?,
            credentials_version: row.credentials_version,
            access_token_expires_at: row.access_token_expires_at,
            cursor: row.sync_cursor,
        }))
    }
}

/// A stored provider and status, parsed.
pub(crate) fn kind_and_status(
    provider: &str,
    status: &str,
) -> Result<(ProviderKind, ConnectionStatus), StoreError> {
    Ok((
        ProviderKind::parse(provider)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown provider {provider:?}")))?,
        ConnectionStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?,
    ))
}

impl Store {
    /// (provider, status, connections), for the gauges.
    pub async fn connection_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_file!("queries/connection_counts.sql")
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| (r.provider, r.status, r.connections))
            .collect())
    }

    /// Moves a connection to `status` (e.g. `reauth_required` when the
    /// provider refuses its credentials).
    pub async fn set_connection_status(
        &self,
        id: ConnectionId,
        status: ConnectionStatus,
    ) -> Result<(), StoreError> {
        sqlx::query_file!("queries/set_connection_status.sql", id.0, status.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
