//! The scheduler's periodic cycles, named once for the scheduler, the
//! configuration, the metrics and the API's filter.

use serde::Deserialize;

/// A scheduler cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cycle {
    /// Enqueue `token_refresh` for connections whose access token expires
    /// within the lead time; flag connections whose refresh token expires
    /// within the warning window.
    TokenRefresh,
    /// Enqueue syncs for connections not synced within their provider's
    /// interval, spread over time so a provider is not hit all at once.
    StaleSync,
    /// Delete finished jobs past their retention and expired idempotency
    /// keys.
    Prune,
}

impl Cycle {
    pub const ALL: [Self; 3] = [Self::TokenRefresh, Self::StaleSync, Self::Prune];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenRefresh => "token_refresh",
            Self::StaleSync => "stale_sync",
            Self::Prune => "prune",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}
