//! Providers' budgets, shared by every daemon: requests per second (a token
//! bucket) and requests in flight (slots), both in Redis, taken before each
//! provider call.
//!
//! A call that would exceed the budget waits in place when the wait is
//! short (`max_wait`); otherwise the job is snoozed until a token is back
//! (reason `provider_budget`, no attempt spent), so a throttled provider
//! never holds worker slots for long. If Redis cannot answer, each process
//! spends its share of the budget (the budget divided by the live worker
//! processes) from a bucket of its own: never unlimited, never a stop
//! (counted as `fail_open`).

use dashtam_db::Db;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use dashtam_buckets::{BudgetKeys, Limit, RedisBuckets, Slot, Take};
use dashtam_telemetry::metrics::METRICS;

use tracing::warn;

use crate::gate::Wait;

/// One provider's budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProviderBudget {
    /// Requests per second, sustained, across every daemon.
    pub per_sec: f64,
    /// Requests that may go out at once after a quiet spell.
    pub burst: u32,
    /// Requests in flight at once across every daemon (0: no limit).
    pub concurrency: u32,
}

#[derive(Clone, Debug)]
pub struct BudgetSettings {
    pub providers: HashMap<String, ProviderBudget>,
    /// Redis, and the prefix of the budget keys (`<prefix>:budget:…`).
    pub redis_url: String,
    pub key_prefix: String,
    /// How long one Redis call may take before this process falls back to
    /// its share.
    pub redis_timeout: Duration,
    /// The longest a call waits in place for the budget; a longer wait
    /// snoozes its job.
    pub max_wait: Duration,
    /// A slot is freed this long after it was taken even if its holder died
    /// (longer than any provider call).
    pub slot_lease: Duration,
}

/// A process's own bucket and slots (while Redis is unreachable).
struct Fallback {
    tokens: f64,
    at: Instant,
    in_flight: u32,
}

pub struct Budgets {
    settings: BudgetSettings,
    redis: Option<RedisBuckets>,
    queue_pool: Db,
    /// Live worker processes, last counted (at least 1).
    peers: AtomicU32,
    peers_counted: Mutex<Option<Instant>>,
    fallback: Mutex<HashMap<String, Fallback>>,
    last_warning: Mutex<Option<Instant>>,
}

/// What spending the budget came to.
enum Outcome {
    Go(Held),
    /// Try again in this long.
    Later(Duration),
}

/// A slot held for one call; freed when dropped.
pub struct Held {
    release: Option<Release>,
}

enum Release {
    Redis {
        budgets: std::sync::Arc<Budgets>,
        key: String,
        member: String,
    },
    Local {
        budgets: std::sync::Arc<Budgets>,
        provider: String,
    },
}

impl Drop for Held {
    fn drop(&mut self) {
        match self.release.take() {
            None => {}
            Some(Release::Redis {
                budgets,
                key,
                member,
            }) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Some(r) = &budgets.redis {
                            r.release(&key, &member).await;
                        }
                    });
                }
            }
            Some(Release::Local { budgets, provider }) => {
                let mut local = budgets.fallback.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(f) = local.get_mut(&provider) {
                    f.in_flight = f.in_flight.saturating_sub(1);
                }
            }
        }
    }
}

/// How often the live processes are counted again.
const PEERS_EVERY: Duration = Duration::from_secs(15);
/// Processes heard from within this long count as live.
const PEERS_WITHIN: Duration = Duration::from_secs(30);

impl Budgets {
    pub fn new(settings: BudgetSettings, queue_pool: impl Into<Db>) -> Self {
        let queue_pool = queue_pool.into();
        let redis = match RedisBuckets::new(&settings.redis_url, settings.redis_timeout) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(error = %e, "provider budgets: bad Redis URL; every process spends its own share");
                None
            }
        };
        Self {
            settings,
            redis,
            queue_pool,
            peers: AtomicU32::new(1),
            peers_counted: Mutex::new(None),
            fallback: Mutex::new(HashMap::new()),
            last_warning: Mutex::new(None),
        }
    }

    /// Spends one request of `provider`'s budget: returns the slot to hold
    /// for the call, after a short wait if need be; or the time to snooze
    /// the job until.
    pub async fn spend(self: &std::sync::Arc<Self>, provider: &str) -> Result<Held, Wait> {
        let Some(budget) = self.settings.providers.get(provider).copied() else {
            return Ok(Held { release: None });
        };
        let deadline = Instant::now() + self.settings.max_wait;
        let mut waited = false;
        loop {
            let (outcome, decision) = match self.take_shared(provider, budget).await {
                Some(o) => (o, "allowed"),
                None => (self.take_local(provider, budget).await, "fail_open"),
            };
            match outcome {
                Outcome::Go(held) => {
                    let decision = if decision == "allowed" && waited {
                        "waited"
                    } else {
                        decision
                    };
                    count(provider, decision);
                    return Ok(held);
                }
                Outcome::Later(after) => {
                    if Instant::now() + after > deadline {
                        count(provider, "deferred");
                        return Err(Wait {
                            until: Utc::now()
                                + chrono::Duration::from_std(after.max(Duration::from_millis(200)))
                                    .unwrap_or_default(),
                            reason: "provider_budget",
                        });
                    }
                    waited = true;
                    tokio::time::sleep(after).await;
                }
            }
        }
    }

    /// From the shared budget in Redis; `None` if Redis did not answer.
    async fn take_shared(
        self: &std::sync::Arc<Self>,
        provider: &str,
        b: ProviderBudget,
    ) -> Option<Outcome> {
        let redis = self.redis.as_ref()?;
        let keys = BudgetKeys::new(&self.settings.key_prefix, provider);
        let member = uuid::Uuid::new_v4().to_string();
        let slot = Slot {
            slots: b.concurrency,
            lease: self.settings.slot_lease,
            member: &member,
        };
        let limit = Limit {
            per_sec: b.per_sec,
            burst: b.burst.max(1),
        };
        let now_sec = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
        let take = redis.take_budget(&keys, limit, &slot, now_sec).await;
        match take {
            Take::Allowed { .. } => Some(Outcome::Go(Held {
                release: (b.concurrency > 0).then(|| Release::Redis {
                    budgets: self.clone(),
                    key: keys.slots.clone(),
                    member: member.clone(),
                }),
            })),
            Take::Limited { retry_ms } => {
                Some(Outcome::Later(Duration::from_millis(retry_ms.max(1))))
            }
            // Slots free as calls end: look again shortly.
            Take::Full => Some(Outcome::Later(Duration::from_millis(fastrand::u64(
                20..=60,
            )))),
            Take::Unavailable(why) => {
                self.warn(&why);
                // The script may have run and only its answer been lost (a
                // timeout): give the slot back rather than leave it held
                // until its lease ends.
                if b.concurrency > 0 {
                    drop(Held {
                        release: Some(Release::Redis {
                            budgets: self.clone(),
                            key: keys.slots.clone(),
                            member,
                        }),
                    });
                }
                None
            }
        }
    }

    /// From this process's share of the budget.
    async fn take_local(self: &std::sync::Arc<Self>, provider: &str, b: ProviderBudget) -> Outcome {
        let peers = f64::from(self.peers().await);
        let per_sec = (b.per_sec / peers).max(0.001);
        let burst = (f64::from(b.burst) / peers).max(1.0);
        let slots = if b.concurrency == 0 {
            u32::MAX
        } else {
            (f64::from(b.concurrency) / peers).ceil() as u32
        };
        let mut local = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
        let f = local.entry(provider.to_owned()).or_insert(Fallback {
            tokens: burst,
            at: Instant::now(),
            in_flight: 0,
        });
        let now = Instant::now();
        f.tokens = (f.tokens + now.duration_since(f.at).as_secs_f64() * per_sec).min(burst);
        f.at = now;
        if f.in_flight >= slots {
            return Outcome::Later(Duration::from_millis(fastrand::u64(20..=60)));
        }
        if f.tokens < 1.0 {
            return Outcome::Later(Duration::from_secs_f64((1.0 - f.tokens) / per_sec));
        }
        f.tokens -= 1.0;
        f.in_flight += 1;
        Outcome::Go(Held {
            release: Some(Release::Local {
                budgets: self.clone(),
                provider: provider.to_owned(),
            }),
        })
    }

    /// Live worker processes (at least 1), counted again every 15 s.
    async fn peers(&self) -> u32 {
        let due = {
            let mut counted = self.peers_counted.lock().unwrap_or_else(|p| p.into_inner());
            let due = counted.is_none_or(|at| at.elapsed() >= PEERS_EVERY);
            if due {
                *counted = Some(Instant::now());
            }
            due
        };
        if due {
            match dashtam_queue::ops::live_workers(&self.queue_pool, PEERS_WITHIN).await {
                Ok(n) => self
                    .peers
                    .store(u32::try_from(n).unwrap_or(1).max(1), Ordering::Relaxed),
                Err(e) => warn!(error = %e, "could not count the live worker processes"),
            }
        }
        self.peers.load(Ordering::Relaxed).max(1)
    }

    fn warn(&self, why: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            warn!(
                error = why,
                "Redis is unavailable; each process spends its share of the provider budgets"
            );
        }
    }
}

fn count(provider: &str, decision: &str) {
    METRICS
        .provider_budget_decisions
        .with_label_values(&[provider, decision])
        .inc();
}
