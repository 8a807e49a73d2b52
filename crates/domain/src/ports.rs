//! Ports: what the domain needs from the outside world. Adapters (the
//! `providers` crate, the `store` crate) implement them.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
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

/// Whom a provider's rate limit applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    /// Every call to the provider (our client id or app).
    Provider,
    /// Calls about one connection (a Plaid Item, a brokerage account).
    Connection,
}

/// Why a provider call failed, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later (5xx, timeouts, connection resets).
    #[error("provider unavailable: {0}")]
    Transient(String),
    /// The provider asked us to slow down: every caller (`scope`
    /// `Provider`), or calls about this one connection (`Connection`, as
    /// Plaid's per-Item limits).
    #[error("provider rate limit hit")]
    RateLimited {
        retry_after: Option<Duration>,
        scope: LimitScope,
    },
    /// Data changed while paging; restart from the cursor the loop began with.
    #[error("provider data changed during pagination")]
    MutationDuringPagination,
    /// The access token expired (HTTP 401 on a data call): refresh it and
    /// try again.
    #[error("provider says the access token expired")]
    AccessTokenExpired,
    /// Credentials were refused (a dead refresh token: `invalid_grant`, or
    /// a revoked item): the user must re-authorize.
    #[error("provider refused the credentials: {0}")]
    Unauthorized(String),
    /// A request or response the provider and we disagree on; retrying will
    /// not help.
    #[error("provider request failed permanently: {0}")]
    Permanent(String),
}

/// What the link flow's exchange gives: the connection's credentials and
/// the provider's id for it (a Plaid `item_id`), which its webhooks name.
#[derive(Debug)]
pub struct Linked {
    pub credentials: ProviderCredentials,
    pub item_id: String,
}

/// A cursor-style transaction source (Plaid `/transactions/sync` shape).
#[async_trait]
pub trait TransactionSyncSource: Send + Sync {
    /// Trades the one-time token from the provider's link flow for the
    /// connection's long-lived credentials.
    async fn exchange_public_token(&self, public_token: &str) -> Result<Linked, ProviderError>;

    /// Every account of the connection with its current balances (a sync
    /// page lists only the accounts its transactions belong to).
    async fn accounts(
        &self,
        credentials: &ProviderCredentials,
    ) -> Result<Vec<NormalizedAccount>, ProviderError>;

    /// Asks the provider to send the connection's webhooks to `url`.
    async fn register_webhook(
        &self,
        credentials: &ProviderCredentials,
        url: &str,
    ) -> Result<(), ProviderError>;

    /// Fetches the page after `cursor` (`None`: from the beginning).
    async fn sync_page(
        &self,
        credentials: &ProviderCredentials,
        cursor: Option<&str>,
        count: u32,
    ) -> Result<SyncPage, ProviderError>;

    /// Tells the provider to forget the connection (its tokens stop working).
    async fn revoke(&self, credentials: &ProviderCredentials) -> Result<(), ProviderError>;
}

/// Tokens an OAuth provider granted.
#[derive(Debug)]
pub struct TokenGrant {
    pub access_token: SecretString,
    /// `None`: the provider sent none, keep the one we have.
    pub refresh_token: Option<SecretString>,
    pub access_expires_in: Duration,
}

/// An OAuth-protected source fetched by date window, with no cursor (the
/// Charles Schwab Trader API shape).
#[async_trait]
pub trait WindowSyncSource: Send + Sync {
    /// Trades an authorization code from the provider's consent step for
    /// tokens.
    async fn exchange_code(&self, code: &str) -> Result<TokenGrant, ProviderError>;

    /// Uses the refresh token; [`ProviderError::Unauthorized`] means it is
    /// dead (`invalid_grant`) and the user must re-authorize.
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenGrant, ProviderError>;

    /// Revokes the connection's tokens at the provider.
    async fn revoke(&self, credentials: &ProviderCredentials) -> Result<(), ProviderError>;

    /// How long a refresh token lives from the user's authorization (fixed:
    /// refreshing does not extend it).
    fn refresh_token_lifetime(&self) -> Duration;

    /// The widest window one transactions request may ask for.
    fn max_window(&self) -> chrono::Duration;

    /// The user's accounts; `provider_account_id` is what
    /// [`WindowSyncSource::transactions`] takes.
    async fn accounts(
        &self,
        access_token: &SecretString,
    ) -> Result<Vec<NormalizedAccount>, ProviderError>;

    /// Every transaction of `account` in `[start, end]`.
    async fn transactions(
        &self,
        access_token: &SecretString,
        account: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<NormalizedTransaction>, ProviderError>;
}

/// What a provider's webhook says about one of its connections (Plaid
/// names it by `item_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderEvent {
    /// New, changed or removed transactions are waiting: sync.
    SyncUpdatesAvailable { item_id: String },
    /// The user must log in again (`ITEM_LOGIN_REQUIRED` and other Item
    /// errors).
    LoginRequired { item_id: String, error_code: String },
    /// Access ends soon unless the user re-authorizes.
    ReauthSoon {
        item_id: String,
        at: Option<DateTime<Utc>>,
    },
    /// The user revoked our access at the provider.
    PermissionRevoked { item_id: String },
    /// The Item works again without the user's help.
    LoginRepaired { item_id: String },
    /// Anything else: acknowledged and counted.
    Other {
        item_id: Option<String>,
        webhook_type: String,
        webhook_code: String,
    },
}

impl ProviderEvent {
    /// The connection the event is about.
    pub fn item_id(&self) -> Option<&str> {
        match self {
            Self::SyncUpdatesAvailable { item_id }
            | Self::LoginRequired { item_id, .. }
            | Self::ReauthSoon { item_id, .. }
            | Self::PermissionRevoked { item_id }
            | Self::LoginRepaired { item_id } => Some(item_id),
            Self::Other { item_id, .. } => item_id.as_deref(),
        }
    }

    /// A name from a closed set, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SyncUpdatesAvailable { .. } => "sync_updates_available",
            Self::LoginRequired { .. } => "login_required",
            Self::ReauthSoon { .. } => "reauth_soon",
            Self::PermissionRevoked { .. } => "permission_revoked",
            Self::LoginRepaired { .. } => "login_repaired",
            Self::Other { .. } => "other",
        }
    }
}

/// Why a webhook was not believed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookRejected {
    /// No signature, a malformed one, an algorithm we do not accept, or a
    /// key the provider does not know.
    #[error("webhook signature missing or malformed: {0}")]
    Unsigned(String),
    /// The signature does not verify, or the body is not the one signed.
    #[error("webhook signature does not verify: {0}")]
    Forged(String),
    /// Signed too long ago (or in the future).
    #[error("webhook is stale: {0}")]
    Stale(String),
    /// Verified, but the body is not a webhook we can read.
    #[error("webhook body is not valid: {0}")]
    Malformed(String),
    /// The provider's verification key could not be fetched now: the
    /// provider will deliver again.
    #[error("webhook verification key unavailable: {0}")]
    KeyUnavailable(String),
}

/// A webhook whose signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedWebhook {
    pub event: ProviderEvent,
    /// Names this delivery (the SHA-256 of its signature, hex): the same
    /// one received twice is a replay.
    pub delivery: String,
}

/// Checks a provider's signed webhook and reads what it says.
#[async_trait]
pub trait WebhookVerifier: Send + Sync {
    /// `signature`: the provider's signature header (Plaid's
    /// `Plaid-Verification`); `body`: the raw bytes received; `now`: the
    /// time to judge freshness by.
    async fn verify(
        &self,
        signature: Option<&str>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<VerifiedWebhook, WebhookRejected>;
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {0:?} does not exist")]
    NotFound(String),
    #[error("secret {id:?} could not be read: {reason}")]
    Unavailable { id: String, reason: String },
}

/// Where secrets (signing keys, encryption keys, provider client secrets)
/// come from: the environment in development, a secrets manager in
/// production.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The current value of secret `id`.
    async fn fetch(&self, id: &str) -> Result<SecretString, SecretError>;
}

/// A secret's current value, kept fresh by whoever owns the source (see the
/// `secrets` crate); readers always see the latest value they were given.
#[derive(Clone, Debug)]
pub struct LiveSecret(Arc<RwLock<SecretString>>);

impl LiveSecret {
    pub fn new(value: SecretString) -> Self {
        Self(Arc::new(RwLock::new(value)))
    }

    pub fn current(&self) -> SecretString {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, value: SecretString) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}
