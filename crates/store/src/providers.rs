//! Provider health shared by every daemon: each provider's circuit breaker
//! and the pause a provider's `Retry-After` asks for (`provider_health`).
//! Transitions are rare, so they are written to Postgres (with their audit
//! record); the failure counting that decides them is each daemon's own.

use chrono::{DateTime, Utc};
use dashtam_domain::audit::AuditEntry;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{Store, StoreError, audit};

/// One provider's row.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderHealth {
    pub provider: String,
    /// `closed` (calls go through), `open` (none do until `probe_at`) or
    /// `half_open` (a few probe calls decide).
    pub breaker: String,
    pub changed_at: DateTime<Utc>,
    /// Open: when probing may start.
    pub probe_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub probe_holder: Option<Uuid>,
    /// Consecutive openings (the cool-down doubles with each).
    pub trips: i32,
    /// The provider asked every caller to wait until then.
    pub paused_until: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

impl Store {
    /// Every provider's row (providers never in trouble have none).
    pub async fn provider_health(&self) -> Result<Vec<ProviderHealth>, StoreError> {
        Ok(
            sqlx::query_file_as!(ProviderHealth, "queries/provider_health.sql")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Records that `provider` asked everyone to wait until `until`.
    pub async fn pause_provider(
        &self,
        provider: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query_file!("queries/pause_provider.sql", provider, until)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Opens `provider`'s breaker on `conn` (the caller's transaction, which
/// also snoozes the provider's jobs), with `outcome` audited; `None` if it
/// was open already. `holder` is the caller's probe-holder id (a failed
/// probe re-opens it).
pub async fn trip_breaker(
    conn: &mut PgConnection,
    provider: &str,
    cooldown: std::time::Duration,
    max_cooldown: std::time::Duration,
    reason: &str,
    holder: Uuid,
    outcome: &AuditEntry,
) -> Result<Option<ProviderHealth>, StoreError> {
    let ms = |d: std::time::Duration| d.as_millis() as f64;
    let row = sqlx::query_file_as!(
        ProviderHealth,
        "queries/trip_breaker.sql",
        provider,
        ms(cooldown),
        ms(max_cooldown),
        reason,
        holder,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = &row {
        let mut outcome = outcome.clone();
        outcome.context["probe_at"] = serde_json::json!(row.probe_at);
        outcome.context["trips"] = row.trips.into();
        audit::append(&mut *conn, &outcome).await?;
    }
    Ok(row)
}

impl Store {
    /// Takes the probes of `provider`'s open breaker once it is due (or of
    /// a half-open one whose holder went quiet for `stale`); `true` for the
    /// one daemon that got them.
    pub async fn take_probe(
        &self,
        provider: &str,
        holder: Uuid,
        stale: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query_file_as!(
            ProviderHealth,
            "queries/take_probe.sql",
            provider,
            holder,
            stale.as_millis() as f64,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The probes of `holder` succeeded: the breaker closes, audited.
    pub async fn close_breaker(
        &self,
        provider: &str,
        holder: Uuid,
        outcome: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let closed = sqlx::query_file_scalar!("queries/close_breaker.sql", provider, holder)
            .fetch_optional(&mut *tx)
            .await?;
        if closed.is_some() {
            audit::append(&mut *tx, outcome).await?;
        }
        tx.commit().await?;
        Ok(closed.is_some())
    }
}
