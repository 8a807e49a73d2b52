//! Ports: what the domain needs from the outside world. Adapters (the
//! `providers` crate, the `store` crate) implement them.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::model::{NormalizedAccount, NormalizedTransaction, RemovedTransaction};

/// Token material for one connection. Only ever stored encrypted; `Debug`
/// never shows the secrets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProviderCredentials {
    #[serde(serialize_with = "expose")]
    pub access_token: SecretString,
    #[serde(serialize_with = "expose_opt", default)]
    pub refresh_token: Option<SecretString>,
}

fn expose<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    ser.serialize_str(s.expose_secret())
}

fn expose_opt<S: serde::Serializer>(s: &Option<SecretString>, ser: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    match s {
        Some(s) => ser.serialize_some(s.expose_secret()),
        None => ser.serialize_none(),
    }
}

/// One page of a cursor-style sync.
#[derive(Clone, Debug, Default)]
pub struct SyncPage {
    pub accounts: Vec<NormalizedAccount>,
    pub added: Vec<NormalizedTransaction>,
    pub modified: Vec<NormalizedTransaction>,
    pub removed: Vec<RemovedTransaction>,
    pub next_cursor: String,
    pub has_more: bool,
}

/// Why a provider call failed, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later (5xx, timeouts, connection resets).
    #[error("provider unavailable: {0}")]
    Transient(String),
    /// The provider asked us to slow down.
    #[error("provider rate limit hit")]
    RateLimited { retry_after: Option<Duration> },
    /// Data changed while paging; restart from the cursor the loop began with.
    #[error("provider data changed during pagination")]
    MutationDuringPagination,
    /// Credentials were refused: the user must re-authorize.
    #[error("provider refused the credentials: {0}")]
    Unauthorized(String),
    /// A request or response the provider and we disagree on; retrying will
    /// not help.
    #[error("provider request failed permanently: {0}")]
    Permanent(String),
}

/// A cursor-style transaction source (Plaid `/transactions/sync` shape).
#[async_trait]
pub trait TransactionSyncSource: Send + Sync {
    /// Trades the one-time token from the provider's link flow for the
    /// connection's long-lived credentials.
    async fn exchange_public_token(
        &self,
        public_token: &str,
    ) -> Result<ProviderCredentials, ProviderError>;

    /// Fetches the page after `cursor` (`None`: from the beginning).
    async fn sync_page(
        &self,
        credentials: &ProviderCredentials,
        cursor: Option<&str>,
        count: u32,
    ) -> Result<SyncPage, ProviderError>;
}
