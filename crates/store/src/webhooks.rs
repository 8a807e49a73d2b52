//! Provider webhooks: which connection one names, whether it was seen
//! before, and the connection changes it asks for.

use dashtam_domain::ConnectionId;
use dashtam_domain::audit::AuditEntry;
use dashtam_domain::model::ProviderKind;
use uuid::Uuid;

use crate::{Store, StoreError, audit};

/// The connection a webhook names.
#[derive(Clone, Debug)]
pub struct ItemConnection {
    pub id: Uuid,
    pub user_id: String,
    pub status: String,
}

/// A change a webhook asks of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// Active → `reauth_required`.
    ReauthRequired,
    /// An active connection's access ends soon: warn once.
    ReauthWarned,
    /// `reauth_required` → active.
    Repaired,
    /// The user revoked access: the tokens go, the connection is `revoked`.
    Revoked,
}

impl ConnectionEvent {
    fn as_str(self) -> &'static str {
        match self {
            Self::ReauthRequired => "reauth_required",
            Self::ReauthWarned => "reauth_warned",
            Self::Repaired => "repaired",
            Self::Revoked => "revoked",
        }
    }
}

impl Store {
    /// The connection whose provider id is `item_id`.
    pub async fn connection_by_item(
        &self,
        provider: ProviderKind,
        item_id: &str,
    ) -> Result<Option<ItemConnection>, StoreError> {
        Ok(sqlx::query_file_as!(
            ItemConnection,
            "queries/connection_by_item.sql",
            provider.as_str(),
            item_id
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records a webhook by the digest of its signature: `false` if it was
    /// recorded before (a replay).
    pub async fn first_receipt(
        &self,
        provider: ProviderKind,
        digest: &str,
    ) -> Result<bool, StoreError> {
        let fresh =
            sqlx::query_file_scalar!("queries/webhook_receipt.sql", digest, provider.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(fresh.is_some())
    }

    /// Applies `event` to connection `id` with its audit OUTCOME, in one
    /// transaction; `false` (and no audit record) when the connection was
    /// not in a state the event changes.
    pub async fn apply_connection_event(
        &self,
        id: ConnectionId,
        event: ConnectionEvent,
        outcome: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let changed = match event {
            ConnectionEvent::Revoked => {
                sqlx::query_file!("queries/wipe_credentials.sql", id.0)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0
            }
            _ => {
                sqlx::query_file!("queries/connection_event.sql", id.0, event.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0
            }
        };
        if changed {
            audit::append(&mut *tx, outcome).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }
}
