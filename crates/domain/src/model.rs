//! The normalized model every provider's data is mapped into.

use std::collections::HashSet;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::Currency;

/// Which provider (and so which wire format) a connection talks to.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Cursor style: Plaid `/transactions/sync`.
    Plaid,
    /// OAuth + date-window style: the Charles Schwab Trader API.
    Schwab,
}

impl ProviderKind {
    pub const ALL: [Self; 2] = [Self::Plaid, Self::Schwab];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaid => "plaid",
            Self::Schwab => "schwab",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
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
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Active,
        Self::ReauthRequired,
        Self::Revoked,
        Self::Disconnected,
        Self::Failed,
    ];

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
        Self::ALL.into_iter().find(|st| st.as_str() == s)
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

/// Changes collected from provider pages and not yet written: the sync
/// writes them in bulk every few thousand rows, inside the one transaction
/// that commits with the new cursor.
#[derive(Clone, Debug, Default)]
pub struct SyncBatch {
    /// The latest version of every account the provider reported.
    pub accounts: Vec<NormalizedAccount>,
    /// Added and modified transactions: both are upserts.
    pub upserts: Vec<NormalizedTransaction>,
    pub removed: Vec<RemovedTransaction>,
    pub next_cursor: Option<String>,
}

type Key<'a> = (&'a str, &'a str);

fn key_of(t: &NormalizedTransaction) -> Key<'_> {
    (
        t.provider_account_id.as_str(),
        t.provider_transaction_id.as_str(),
    )
}

impl SyncBatch {
    /// Keeps the latest version of each account in `accounts`.
    pub fn absorb_accounts(&mut self, accounts: Vec<NormalizedAccount>) {
        for account in accounts {
            match self
                .accounts
                .iter_mut()
                .find(|a| a.provider_account_id == account.provider_account_id)
            {
                Some(existing) => *existing = account,
                None => self.accounts.push(account),
            }
        }
    }

    /// Folds one page in, in the provider's order: added and modified
    /// transactions, then removals. An upsert revives an id removed earlier
    /// in the batch; a removal cancels an earlier upsert of the same id.
    pub fn absorb(&mut self, page: crate::ports::SyncPage) {
        self.absorb_accounts(page.accounts);
        let upserts = page.added.into_iter().chain(page.modified);
        if self.removed.is_empty() {
            self.upserts.extend(upserts);
        } else {
            let upserts: Vec<_> = upserts.collect();
            let revived: HashSet<Key<'_>> = upserts.iter().map(key_of).collect();
            self.removed.retain(|r| {
                !revived.contains(&(
                    r.provider_account_id.as_str(),
                    r.provider_transaction_id.as_str(),
                ))
            });
            self.upserts.extend(upserts);
        }
        if !page.removed.is_empty() {
            let gone: HashSet<Key<'_>> = page
                .removed
                .iter()
                .map(|r| {
                    (
                        r.provider_account_id.as_str(),
                        r.provider_transaction_id.as_str(),
                    )
                })
                .collect();
            self.upserts.retain(|t| !gone.contains(&key_of(t)));
        }
        self.removed.extend(page.removed);
        self.next_cursor = Some(page.next_cursor);
    }

    /// Rows waiting to be written.
    pub fn pending_rows(&self) -> usize {
        self.upserts.len() + self.removed.len()
    }

    /// Keeps only the last version of each transaction, preserving order, so
    /// one bulk upsert never touches the same row twice.
    pub fn dedupe_upserts(&mut self) {
        let mut seen = HashSet::with_capacity(self.upserts.len());
        let mut keep = vec![false; self.upserts.len()];
        for (i, t) in self.upserts.iter().enumerate().rev() {
            keep[i] = seen.insert(key_of(t));
        }
        let mut i = 0;
        self.upserts.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::SyncPage;

    fn txn(id: &str, description: &str) -> NormalizedTransaction {
        NormalizedTransaction {
            provider_account_id: "a".into(),
            provider_transaction_id: id.into(),
            amount: Decimal::ONE,
            currency: Currency::USD,
            status: TransactionStatus::Settled,
            transaction_date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            posted_date: None,
            description: description.into(),
            merchant: None,
            category: None,
            txn_type: "purchase".into(),
            txn_subtype: None,
            symbol: None,
            quantity: None,
            price: None,
            pending_provider_transaction_id: None,
            raw: "{}".into(),
        }
    }

    fn removed(id: &str) -> RemovedTransaction {
        RemovedTransaction {
            provider_account_id: "a".into(),
            provider_transaction_id: id.into(),
        }
    }

    fn page(added: Vec<NormalizedTransaction>, gone: Vec<RemovedTransaction>) -> SyncPage {
        SyncPage {
            added,
            removed: gone,
            next_cursor: "c".into(),
            ..SyncPage::default()
        }
    }

    #[test]
    fn later_versions_win_and_removals_cancel_earlier_upserts() {
        let mut b = SyncBatch::default();
        b.absorb(page(vec![txn("1", "v1"), txn("2", "v1")], vec![]));
        b.absorb(page(vec![txn("1", "v2")], vec![removed("2")]));
        b.dedupe_upserts();
        assert_eq!(b.upserts.len(), 1);
        assert_eq!(b.upserts[0].description, "v2");
        assert_eq!(b.removed, vec![removed("2")]);
        assert_eq!(b.pending_rows(), 2);
    }

    #[test]
    fn an_upsert_after_a_removal_revives_the_row() {
        let mut b = SyncBatch::default();
        b.absorb(page(vec![], vec![removed("1")]));
        b.absorb(page(vec![txn("1", "back")], vec![]));
        assert!(b.removed.is_empty());
        assert_eq!(b.upserts.len(), 1);
    }
}
