//! The scheduler's sweeps over connections: indexed, set-based, and run on
//! the caller's transaction (the tick's), so what a tick finds and what it
//! enqueues commit together.

use chrono::{DateTime, Utc};
use dashtam_domain::ConnectionId;
use dashtam_domain::model::ProviderKind;
use sqlx::PgExecutor;

use crate::StoreError;

/// A connection a sweep found, and the user its jobs are for.
pub type Due = (ConnectionId, String);

/// Active connections whose access token expires before `before`, with
/// their user and provider.
pub async fn refresh_due<'e>(
    executor: impl PgExecutor<'e>,
    before: DateTime<Utc>,
) -> Result<Vec<(ConnectionId, String, String)>, StoreError> {
    Ok(sqlx::query_file!("queries/refresh_due.sql", before)
        .fetch_all(executor)
        .await?
        .into_iter()
        .map(|r| (ConnectionId(r.id), r.user_id, r.provider))
        .collect())
}

/// Flags (once each) active connections whose refresh token expires before
/// `before`, with an audit record apiece; returns how many.
pub async fn flag_expiring_grants<'e>(
    executor: impl PgExecutor<'e>,
    before: DateTime<Utc>,
    correlation_id: &str,
) -> Result<u64, StoreError> {
    Ok(
        sqlx::query_file!("queries/flag_expiring_grants.sql", before, correlation_id)
            .execute(executor)
            .await?
            .rows_affected(),
    )
}

/// Active connections of `provider` not synced since `since` (or never).
pub async fn sync_due<'e>(
    executor: impl PgExecutor<'e>,
    provider: ProviderKind,
    since: DateTime<Utc>,
    per_user: u32,
) -> Result<Vec<Due>, StoreError> {
    Ok(sqlx::query_file!(
        "queries/sync_due.sql",
        provider.as_str(),
        since,
        i64::from(per_user)
    )
    .fetch_all(executor)
    .await?
    .into_iter()
    .map(|r| (ConnectionId(r.id), r.user_id))
    .collect())
}
