//! The normalized model every provider's data is mapped into.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::Currency;

/// Which provider (and so which wire format) a connection talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Cursor style: Plaid `/transactions/sync`.
    Plaid,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaid => "plaid",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "plaid" => Some(Self::Plaid),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Pending,
    Active,
    ReauthRequired,
    Revoked,
    Disconnected,
    Failed,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::ReauthRequired => "reauth_required",
            Self::Revoked => "revoked",
            Self::Disconnected => "disconnected",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "reauth_required" => Self::ReauthRequired,
            "revoked" => Self::Revoked,
            "disconnected" => Self::Disconnected,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// Whether a sync may run against a connection in this state.
    pub fn can_sync(self) -> bool {
        matches!(self, Self::Active)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionStatus {
    Pending,
    Settled,
    Failed,
    Cancelled,
}

impl TransactionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Settled => "settled",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// An account as the provider reports it, normalized.
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizedAccount {
    pub provider_account_id: String,
    pub name: String,
    pub official_name: Option<String>,
    pub mask: Option<String>,
    /// checking, savings, credit_card, brokerage, ira, loan, other…
    pub account_type: String,
    pub account_subtype: Option<String>,
    pub balance_current: Option<Decimal>,
    pub balance_available: Option<Decimal>,
    pub currency: Currency,
}

/// A transaction as the provider reports it, normalized.
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizedTransaction {
    pub provider_account_id: String,
    pub provider_transaction_id: String,
    /// Positive = money in, negative = money out.
    pub amount: Decimal,
    pub currency: Currency,
    pub status: TransactionStatus,
    pub transaction_date: NaiveDate,
    pub posted_date: Option<NaiveDate>,
    pub description: String,
    pub merchant: Option<String>,
    pub category: Option<String>,
    /// trade, transfer, income, fee, purchase, …
    pub txn_type: String,
    pub txn_subtype: Option<String>,
    pub symbol: Option<String>,
    pub quantity: Option<Decimal>,
    pub price: Option<Decimal>,
    /// For a posted transaction: the provider id of the pending one it replaced.
    pub pending_provider_transaction_id: Option<String>,
    /// The provider's own JSON for this transaction, verbatim text.
    pub raw: String,
}

/// A transaction the provider says is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedTransaction {
    pub provider_account_id: String,
    pub provider_transaction_id: String,
}

/// Everything one complete sync learned, to be committed in one transaction
/// together with `next_cursor`.
#[derive(Clone, Debug, Default)]
pub struct SyncBatch {
    pub accounts: Vec<NormalizedAccount>,
    /// Added and modified transactions: both are upserts.
    pub upserts: Vec<NormalizedTransaction>,
    pub removed: Vec<RemovedTransaction>,
    pub next_cursor: Option<String>,
}

impl SyncBatch {
    /// Folds one page into the batch. A later page's version of a
    /// transaction supersedes an earlier one; a removal cancels an upsert of
    /// the same id collected earlier in this sync.
    pub fn absorb(&mut self, page: crate::ports::SyncPage) {
        for account in page.accounts {
            match self
                .accounts
                .iter_mut()
                .find(|a| a.provider_account_id == account.provider_account_id)
            {
                Some(existing) => *existing = account,
                None => self.accounts.push(account),
            }
        }
        if !page.removed.is_empty() {
            let gone: std::collections::HashSet<(&str, &str)> = page
                .removed
                .iter()
                .map(|r| {
                    (
                        r.provider_account_id.as_str(),
                        r.provider_transaction_id.as_str(),
                    )
                })
                .collect();
            self.upserts.retain(|t| {
                !gone.contains(&(
                    t.provider_account_id.as_str(),
                    t.provider_transaction_id.as_str(),
                ))
            });
        }
        self.upserts.extend(page.added);
        self.upserts.extend(page.modified);
        self.removed.extend(page.removed);
        self.next_cursor = Some(page.next_cursor);
    }

    /// Keeps only the last version of each transaction, preserving order, so
    /// one bulk upsert never touches the same row twice.
    pub fn dedupe_upserts(&mut self) {
        let mut seen = std::collections::HashSet::with_capacity(self.upserts.len());
        let mut keep = vec![false; self.upserts.len()];
        for (i, t) in self.upserts.iter().enumerate().rev() {
            keep[i] = seen.insert((&t.provider_account_id, &t.provider_transaction_id));
        }
        let mut i = 0;
        self.upserts.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }
}
