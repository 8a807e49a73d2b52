//! Provider adapters: each implements a domain port over reqwest.
//!
//! Architecture invariant: adapters speak the provider's real wire format;
//! pointing `base_url` at the real provider must work. Provider quirks (sign
//! conventions, currency fallbacks, status names) are normalized here and
//! nowhere else.

pub mod plaid;

pub use plaid::{PlaidClient, PlaidConfig};

use std::sync::Arc;

use dashtam_domain::model::ProviderKind;
use dashtam_domain::ports::TransactionSyncSource;

/// The configured adapter for each provider kind.
#[derive(Clone, Default)]
pub struct Providers {
    pub plaid: Option<Arc<dyn TransactionSyncSource>>,
}

impl Providers {
    /// The cursor-style source for `kind`, if that provider is configured.
    pub fn sync_source(&self, kind: ProviderKind) -> Option<Arc<dyn TransactionSyncSource>> {
        match kind {
            ProviderKind::Plaid => self.plaid.clone(),
        }
    }
}
