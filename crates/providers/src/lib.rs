//! Provider adapters: each implements a domain port over reqwest.
//!
//! Architecture invariant: adapters speak the provider's real wire format;
//! pointing `base_url` at the real provider must work. Provider quirks (sign
//! conventions, currency fallbacks, status names) are normalized here and
//! nowhere else.

pub mod endpoints;
mod http;
pub mod plaid;
mod plaid_webhooks;
pub mod schwab;

pub use plaid::{PlaidClient, PlaidConfig};
pub use plaid_webhooks::PlaidWebhooks;
pub use schwab::{SchwabClient, SchwabConfig};

use std::sync::Arc;

use dashtam_domain::model::ProviderKind;
use dashtam_domain::ports::{
    ProviderCredentials, ProviderError, TransactionSyncSource, WebhookVerifier, WindowSyncSource,
};

/// The configured adapter for each provider kind.
#[derive(Clone, Default)]
pub struct Providers {
    pub plaid: Option<Arc<dyn TransactionSyncSource>>,
    pub schwab: Option<Arc<dyn WindowSyncSource>>,
    /// Checks Plaid's signed webhooks.
    pub plaid_webhooks: Option<Arc<dyn WebhookVerifier>>,
    /// Where Plaid should send a new connection's webhooks (our public
    /// `/api/v1/webhooks/plaid`); `None`: not registered.
    pub plaid_webhook_url: Option<String>,
}

/// A provider's adapter, by the style of its API.
#[derive(Clone)]
pub enum Source {
    Cursor(Arc<dyn TransactionSyncSource>),
    Window(Arc<dyn WindowSyncSource>),
}

impl Providers {
    /// The adapter for `kind`, if that provider is configured.
    pub fn source(&self, kind: ProviderKind) -> Option<Source> {
        match kind {
            ProviderKind::Plaid => self.plaid.clone().map(Source::Cursor),
            ProviderKind::Schwab => self.schwab.clone().map(Source::Window),
        }
    }
}

impl Source {
    /// Revokes the connection's credentials at the provider.
    pub async fn revoke(&self, credentials: &ProviderCredentials) -> Result<(), ProviderError> {
        match self {
            Self::Cursor(s) => s.revoke(credentials).await,
            Self::Window(s) => s.revoke(credentials).await,
        }
    }
}
