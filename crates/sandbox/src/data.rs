//! Deterministic, seeded transaction histories.
//!
//! An item's history is an event log. Its first `accounts × per_account`
//! events ("initial" transactions) are computed on demand from the seed, so
//! an item with millions of transactions costs no memory; later events
//! (pending transactions posting, modifications, removals, new
//! transactions) are appended by [`advance`] and kept. A cursor is an
//! offset into the log.

use std::collections::{HashMap, HashSet};

use chrono::{Days, NaiveDate};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::Inner;

/// How big an item is; unset fields take the sandbox defaults.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ItemSpec {
    pub accounts: Option<u32>,
    pub transactions_per_account: Option<u32>,
}

/// What [`advance`] should make happen.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Advance {
    /// Post every pending transaction: Plaid sends the pending id in
    /// `removed` and a new posted transaction carrying
    /// `pending_transaction_id` in `added`.
    pub post_pending: bool,
    /// How many settled transactions to modify.
    pub modify: u32,
    /// How many settled transactions to remove.
    pub remove: u32,
    /// How many new transactions to add.
    pub add: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Advanced {
    pub posted: u32,
    pub modified: u32,
    pub removed: u32,
    pub added: u32,
}

impl Advanced {
    /// Whether the item's data changed.
    pub fn changed(&self) -> bool {
        self.posted + self.modified + self.removed + self.added > 0
    }
}

/// A transaction before it is put on the wire.
#[derive(Clone, Debug)]
pub struct Txn {
    pub transaction_id: String,
    pub account_id: String,
    /// Plaid's sign: positive = money out.
    pub amount: Decimal,
    pub date: NaiveDate,
    pub name: String,
    pub merchant_name: Option<&'static str>,
    pub pending: bool,
    pub pending_transaction_id: Option<String>,
    pub category: (&'static str, &'static str),
    pub payment_channel: &'static str,
}

#[derive(Clone, Debug)]
pub enum Event {
    Added(Txn),
    Modified(Txn),
    Removed {
        transaction_id: String,
        account_id: String,
    },
}

pub struct Item {
    pub item_id: String,
    /// Where Plaid-style webhooks for this item go (`webhook` at link time,
    /// `/item/webhook/update`).
    pub webhook: Option<String>,
    /// The user must log in again (`/sandbox/item/reset_login`): data calls
    /// fail with `ITEM_LOGIN_REQUIRED` until the item is removed.
    pub login_required: bool,
    /// `/transactions/sync` was called at least once: Plaid sends
    /// `SYNC_UPDATES_AVAILABLE` only from then on.
    pub synced: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    index: u64,
    accounts: u32,
    per_account: u32,
    /// Bumped whenever the log grows; a cursor issued mid-pagination under
    /// an older generation gets `TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION`.
    pub generation: u64,
    extra: Vec<Event>,
    posted: HashSet<u64>,
    removed: HashSet<u64>,
    modified: HashMap<u64, u32>,
    added: u64,
}

/// The day the generated history ends (fixed, so data is reproducible).
fn anchor() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 1).unwrap_or(NaiveDate::MIN)
}

const MERCHANTS: [(&str, &str, &str, &str); 10] = [
    (
        "Blue Bottle Coffee",
        "FOOD_AND_DRINK",
        "FOOD_AND_DRINK_COFFEE",
        "in store",
    ),
    (
        "Whole Foods",
        "FOOD_AND_DRINK",
        "FOOD_AND_DRINK_GROCERIES",
        "in store",
    ),
    ("Shell", "TRANSPORTATION", "TRANSPORTATION_GAS", "in store"),
    (
        "Amazon",
        "GENERAL_MERCHANDISE",
        "GENERAL_MERCHANDISE_ONLINE_MARKETPLACES",
        "online",
    ),
    (
        "Uber",
        "TRANSPORTATION",
        "TRANSPORTATION_TAXIS_AND_RIDE_SHARES",
        "online",
    ),
    (
        "Netflix",
        "ENTERTAINMENT",
        "ENTERTAINMENT_TV_AND_MOVIES",
        "online",
    ),
    ("Delta", "TRAVEL", "TRAVEL_FLIGHTS", "online"),
    (
        "Target",
        "GENERAL_MERCHANDISE",
        "GENERAL_MERCHANDISE_SUPERSTORES",
        "in store",
    ),
    (
        "Costco",
        "GENERAL_MERCHANDISE",
        "GENERAL_MERCHANDISE_SUPERSTORES",
        "in store",
    ),
    (
        "Chipotle",
        "FOOD_AND_DRINK",
        "FOOD_AND_DRINK_FAST_FOOD",
        "in store",
    ),
];

/// splitmix64: a tiny, good, stable mixing function.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Item {
    fn total(&self) -> u64 {
        u64::from(self.accounts) * u64::from(self.per_account)
    }

    /// The most recent 2% of the initial history (at least one) is pending.
    fn pending_from(&self) -> u64 {
        let total = self.total();
        total - (total / 50).max(1).min(total)
    }

    pub fn len(&self) -> u64 {
        self.total() + self.extra.len() as u64
    }

    pub fn account_ids(&self) -> Vec<String> {
        (0..self.accounts).map(|a| self.account_id(a)).collect()
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    fn account_id(&self, account: u32) -> String {
        format!("acc-{}-{account}", self.index)
    }

    /// Initial transaction `i` (its first version), or one of the added ones
    /// when `i >= total`.
    fn generate(&self, seed: u64, i: u64, id: String) -> Txn {
        let h = mix(seed ^ mix(self.index.wrapping_mul(0x1000_0000_01B3)) ^ mix(i));
        let total = self.total().max(1);
        let account = u32::try_from(i % u64::from(self.accounts.max(1))).unwrap_or(0);
        let date = if i < total {
            anchor() - Days::new((total - 1 - i) * 365 / total)
        } else {
            anchor() + Days::new(1 + (i - total) / 50)
        };
        let income = h.is_multiple_of(10);
        let cents = 100 + (h >> 8) % 20_000;
        let (name, merchant, category, channel) = if income {
            (
                "ACME Corp Payroll".to_owned(),
                None,
                ("INCOME", "INCOME_WAGES"),
                "other",
            )
        } else {
            let m = MERCHANTS[usize::try_from((h >> 32) % 10).unwrap_or(0)];
            (m.0.to_uppercase(), Some(m.0), (m.1, m.2), m.3)
        };
        let amount = Decimal::new(i64::try_from(cents).unwrap_or(0), 2);
        Txn {
            transaction_id: id,
            account_id: self.account_id(account),
            amount: if income {
                -amount * Decimal::TEN
            } else {
                amount
            },
            date,
            name,
            merchant_name: merchant,
            pending: (self.pending_from()..self.total()).contains(&i),
            pending_transaction_id: None,
            category,
            payment_channel: channel,
        }
    }

    fn initial_id(&self, i: u64) -> String {
        format!("txn-{}-{i}", self.index)
    }

    /// Events `from..to` of the log.
    pub fn events(&self, seed: u64, from: u64, to: u64) -> Vec<Event> {
        let total = self.total();
        let mut out = Vec::with_capacity(usize::try_from(to.saturating_sub(from)).unwrap_or(0));
        for i in from..to.min(total) {
            out.push(Event::Added(self.generate(seed, i, self.initial_id(i))));
        }
        let start = usize::try_from(from.max(total) - total).unwrap_or(usize::MAX);
        let end = usize::try_from(to.max(total) - total).unwrap_or(usize::MAX);
        out.extend(
            self.extra
                .iter()
                .skip(start)
                .take(end.saturating_sub(start))
                .cloned(),
        );
        out
    }
}

pub(crate) fn create_item(inner: &mut Inner, spec: ItemSpec) -> String {
    let index = inner.next_item;
    inner.next_item += 1;
    let access_token = format!(
        "access-sandbox-{:016x}-{index}",
        mix(inner.config.seed ^ index)
    );
    let item = Item {
        item_id: format!("item-{index}"),
        webhook: None,
        login_required: false,
        synced: false,
        created_at: chrono::Utc::now(),
        index,
        accounts: spec
            .accounts
            .unwrap_or(inner.config.accounts_per_item)
            .max(1),
        per_account: spec
            .transactions_per_account
            .unwrap_or(inner.config.transactions_per_account),
        generation: 0,
        extra: Vec::new(),
        posted: HashSet::new(),
        removed: HashSet::new(),
        modified: HashMap::new(),
        added: 0,
    };
    inner.items.insert(access_token.clone(), item);
    access_token
}

pub(crate) fn advance(inner: &mut Inner, access_token: &str, adv: Advance) -> Option<Advanced> {
    let seed = inner.config.seed;
    let item = inner.items.get_mut(access_token)?;
    let mut done = Advanced::default();
    let mut events = Vec::new();
    if adv.post_pending {
        for i in item.pending_from()..item.total() {
            if item.removed.contains(&i) || !item.posted.insert(i) {
                continue;
            }
            let pending_id = item.initial_id(i);
            let mut posted = item.generate(seed, i, format!("{pending_id}-posted"));
            posted.pending = false;
            posted.pending_transaction_id = Some(pending_id.clone());
            events.push(Event::Removed {
                transaction_id: pending_id,
                account_id: posted.account_id.clone(),
            });
            events.push(Event::Added(posted));
            done.posted += 1;
        }
    }
    let settled: Vec<u64> = (0..item.pending_from())
        .filter(|i| !item.removed.contains(i))
        .collect();
    for &i in settled.iter().take(adv.modify as usize) {
        let version = item.modified.entry(i).or_insert(0);
        *version += 1;
        let v = *version;
        let mut t = item.generate(seed, i, item.initial_id(i));
        t.name = format!("{} (adjusted {v})", t.name);
        t.amount += Decimal::new(i64::from(v), 2);
        events.push(Event::Modified(t));
        done.modified += 1;
    }
    for &i in settled.iter().rev().take(adv.remove as usize) {
        item.removed.insert(i);
        let t = item.generate(seed, i, item.initial_id(i));
        events.push(Event::Removed {
            transaction_id: t.transaction_id,
            account_id: t.account_id,
        });
        done.removed += 1;
    }
    for _ in 0..adv.add {
        let j = item.added;
        item.added += 1;
        let t = item.generate(
            seed,
            item.total() + j,
            format!("txn-{}-new-{j}", item.index),
        );
        events.push(Event::Added(Txn {
            pending: false,
            ..t
        }));
        done.added += 1;
    }
    if !events.is_empty() {
        item.generation += 1;
        item.extra.extend(events);
    }
    Some(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Sandbox, SandboxConfig};

    #[test]
    fn histories_are_deterministic_and_lazy() {
        let a = Sandbox::new(SandboxConfig::default());
        let b = Sandbox::new(SandboxConfig::default());
        let spec = ItemSpec {
            accounts: Some(2),
            transactions_per_account: Some(1_000_000),
        };
        let ta = a.create_item(spec.clone());
        let tb = b.create_item(spec);
        assert_eq!(ta, tb);
        let ia = a.lock();
        let ib = b.lock();
        let (x, y) = (&ia.items[&ta], &ib.items[&tb]);
        assert_eq!(x.len(), 2_000_000);
        let ex = x.events(42, 1_999_990, 2_000_000);
        let ey = y.events(42, 1_999_990, 2_000_000);
        assert_eq!(ex.len(), 10);
        assert_eq!(format!("{ex:?}"), format!("{ey:?}"));
        // The tail of the history is pending.
        assert!(matches!(&ex[9], Event::Added(t) if t.pending));
        assert!(matches!(&x.events(42, 0, 1)[0], Event::Added(t) if !t.pending));
    }

    #[test]
    fn advance_appends_posting_modification_removal_and_additions() {
        let s = Sandbox::new(SandboxConfig::default());
        let token = s.create_item(ItemSpec {
            accounts: Some(1),
            transactions_per_account: Some(100),
        });
        let done = s
            .advance(
                &token,
                Advance {
                    post_pending: true,
                    modify: 3,
                    remove: 2,
                    add: 5,
                },
            )
            .unwrap();
        assert_eq!(
            done,
            Advanced {
                posted: 2,
                modified: 3,
                removed: 2,
                added: 5
            }
        );
        // Posting twice posts nothing new.
        let again = s
            .advance(
                &token,
                Advance {
                    post_pending: true,
                    ..Advance::default()
                },
            )
            .unwrap();
        assert_eq!(again.posted, 0);
        let inner = s.lock();
        let item = &inner.items[&token];
        assert_eq!(item.generation, 1);
        assert_eq!(item.len(), 100 + 2 * 2 + 3 + 2 + 5);
        let tail = item.events(42, 100, item.len());
        assert!(matches!(&tail[1], Event::Added(t) if t.pending_transaction_id.is_some()));
    }
}
