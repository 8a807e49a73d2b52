//! Every provider call goes through the provider's gate: a circuit breaker
//! shared by every daemon, and the pause a provider's `Retry-After` asks
//! for.
//!
//! Each daemon counts its own calls' outcomes over a sliding window; when
//! the share of failures (5xx, timeouts, connection errors; not the 4xx one
//! connection's credentials cause) crosses the threshold, it *trips* the
//! breaker in Postgres (`provider_health`), and in the same transaction
//! snoozes every pending job of the provider past the breaker's probe time
//! and audits the transition. Every daemon reads the shared state (cached
//! for a second): while the breaker is open, a job about to call the
//! provider is snoozed instead, without spending an attempt. At the probe
//! time one daemon takes the probes (half-open): its next calls decide, the
//! others keep waiting; enough successes close the breaker (and wake the
//! snoozed jobs), a failure opens it again with a doubled cool-down.
//!
//! A 429 pauses the provider for everyone until its `Retry-After`: the job
//! that received it waits a short pause out in place (it keeps the pages it
//! fetched); every other job of the provider is snoozed until then.

use dashtam_db::Db;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashtam_domain::audit::{AuditAction, AuditEntry, AuditOutcome, AuditPhase};
use dashtam_domain::ports::{LimitScope, ProviderError};
use dashtam_queue::ops;
use dashtam_store::Store;
use dashtam_store::providers::ProviderHealth;
use dashtam_telemetry::metrics::METRICS;

use tracing::{info, warn};
use uuid::Uuid;

use crate::budget::{Budgets, Held};

/// When a breaker opens and how it recovers.
#[derive(Clone, Debug)]
pub struct BreakerSettings {
    /// The window failures are counted over.
    pub window: Duration,
    /// Fewer calls than this in the window never trip the breaker.
    pub min_calls: u32,
    /// The share of failed calls (0–1) that trips it.
    pub failure_ratio: f64,
    /// How long it stays open the first time (doubled each consecutive
    /// time, up to `max_cooldown`).
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// Probe calls that decide: this many successes close it, this many
    /// failures open it again.
    pub probes: u32,
}

/// Why a call may not go ahead now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    pub until: DateTime<Utc>,
    /// `provider_unavailable` (breaker open), `provider_rate_limited` (the
    /// provider asked to wait), `provider_budget` (our budget for it is
    /// spent for now) or `connection_rate_limited` (the provider limits
    /// this connection's calls, as Plaid's per-Item limits).
    pub reason: &'static str,
}

impl Wait {
    pub fn delay(&self) -> Duration {
        (self.until - Utc::now()).to_std().unwrap_or_default()
    }
}

/// What a provider call came to, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Up,
    Down,
    RateLimited(Option<Duration>),
}

fn seen<T>(r: &Result<T, ProviderError>) -> Seen {
    match r {
        Err(ProviderError::Transient(_)) => Seen::Down,
        Err(ProviderError::RateLimited {
            retry_after,
            scope: LimitScope::Provider,
        }) => Seen::RateLimited(*retry_after),
        // Answers, even refusals, mean the provider is up.
        _ => Seen::Up,
    }
}

#[derive(Default)]
struct Local {
    /// (when, failed) of this daemon's recent calls.
    calls: VecDeque<(Instant, bool)>,
    /// Successful and failed calls while this daemon held the probes.
    probe_successes: u32,
    probe_failures: u32,
}

pub struct ProviderGate {
    store: Store,
    queue_pool: Db,
    settings: BreakerSettings,
    budgets: Arc<Budgets>,
    /// This daemon, as a probe holder.
    id: Uuid,
    local: Mutex<HashMap<String, Local>>,
    shared: Mutex<(Option<Instant>, HashMap<String, ProviderHealth>)>,
}

/// How long the shared state is trusted before it is read again.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long others wait while one daemon probes.
const PROBE_WAIT: Duration = Duration::from_secs(5);
/// How long a job whose calls failed, with too few calls yet to decide
/// whether the provider is down, waits for the verdict of the calls that
/// started with it (see [`ProviderGate::outage`]); and for how long after
/// the first failed call such a job waits instead of spending its attempt.
const VERDICT_WAIT: Duration = Duration::from_secs(2);
const VERDICT_WINDOW: Duration = Duration::from_secs(10);

impl ProviderGate {
    pub fn new(
        store: Store,
        queue_pool: Db,
        settings: BreakerSettings,
        budgets: Arc<Budgets>,
    ) -> Self {
        Self {
            store,
            queue_pool,
            settings,
            budgets,
            id: Uuid::now_v7(),
            local: Mutex::new(HashMap::new()),
            shared: Mutex::new((None, HashMap::new())),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared state of `provider`, read again if older than a second.
    async fn health(&self, provider: &str) -> Option<ProviderHealth> {
        let stale = {
            let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            shared.0.is_none_or(|at| at.elapsed() > FRESH_FOR)
        };
        if stale {
            match self.store.provider_health().await {
                Ok(rows) => {
                    let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                    *shared = (
                        Some(Instant::now()),
                        rows.into_iter().map(|r| (r.provider.clone(), r)).collect(),
                    );
                }
                // Unreadable: go on with what we knew (the call itself will
                // tell whether the provider is up).
                Err(e) => warn!(error = %e, "could not read provider health"),
            }
        }
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.1.get(provider).cloned()
    }

    fn forget_shared(&self) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
    }

    /// Spends one request of `provider`'s budget (see `budget`): the slot
    /// to hold while the call is out, or how long to wait.
    pub async fn spend(&self, provider: &str) -> Result<Held, Wait> {
        self.budgets.spend(provider).await
    }

    /// Whether a call to `provider` may go ahead now.
    pub async fn admit(&self, provider: &str) -> Result<(), Wait> {
        let Some(h) = self.health(provider).await else {
            return Ok(());
        };
        let now = Utc::now();
        if let Some(until) = h.paused_until.filter(|u| *u > now) {
            return Err(Wait {
                until,
                reason: "provider_rate_limited",
            });
        }
        match h.breaker.as_str() {
            "open" => {
                let probe_at = h.probe_at.unwrap_or(now);
                if probe_at > now {
                    return Err(Wait {
                        until: probe_at,
                        reason: "provider_unavailable",
                    });
                }
                self.try_probe(provider).await
            }
            "half_open" if h.probe_holder == Some(self.id) => Ok(()),
            "half_open" => {
                // Another daemon probes; take over if it went quiet.
                if now - h.changed_at
                    > chrono::Duration::from_std(self.settings.cooldown * 2).unwrap_or_default()
                {
                    return self.try_probe(provider).await;
                }
                Err(Wait {
                    until: now + chrono::Duration::from_std(PROBE_WAIT).unwrap_or_default(),
                    reason: "provider_unavailable",
                })
            }
            _ => Ok(()),
        }
    }

    async fn try_probe(&self, provider: &str) -> Result<(), Wait> {
        let wait = Wait {
            until: Utc::now() + chrono::Duration::from_std(PROBE_WAIT).unwrap_or_default(),
            reason: "provider_unavailable",
        };
        match self
            .store
            .take_probe(provider, self.id, self.settings.cooldown * 2)
            .await
        {
            Ok(true) => {
                info!(provider, "breaker half-open: this daemon probes");
                METRICS
                    .provider_breaker_transitions
                    .with_label_values(&[provider, "half_open"])
                    .inc();
                {
                    let mut local = self.local();
                    let l = local.entry(provider.to_owned()).or_default();
                    l.probe_successes = 0;
                    l.probe_failures = 0;
                }
                self.forget_shared();
                Ok(())
            }
            Ok(false) => {
                self.forget_shared();
                Err(wait)
            }
            Err(e) => {
                warn!(error = %e, provider, "could not take the breaker's probes");
                Err(wait)
            }
        }
    }

    /// Whether `provider` is down or paused for everyone, as far as this
    /// daemon can tell: its breaker is open or probing, it asked everyone to
    /// wait, or this daemon's own recent calls mostly failed (the breaker may
    /// be about to open). A call whose in-place retries ran out then waits
    /// instead of failing its attempt.
    async fn down(&self, provider: &str) -> Option<Wait> {
        let now = Utc::now();
        let later = |d: Duration| now + chrono::Duration::from_std(d).unwrap_or_default();
        if let Some(h) = self.health(provider).await {
            if let Some(until) = h.paused_until.filter(|u| *u > now) {
                return Some(Wait {
                    until,
                    reason: "provider_rate_limited",
                });
            }
            if h.breaker != "closed" {
                return Some(Wait {
                    until: h
                        .probe_at
                        .filter(|p| *p > now)
                        .unwrap_or_else(|| later(PROBE_WAIT)),
                    reason: "provider_unavailable",
                });
            }
        }
        let local = self.local();
        let l = local.get(provider)?;
        let total = l.calls.len() as u32;
        let failures = l.calls.iter().filter(|(_, f)| *f).count() as u32;
        (total >= self.settings.min_calls
            && f64::from(failures) >= self.settings.failure_ratio * f64::from(total))
        .then(|| Wait {
            until: later(self.settings.cooldown),
            reason: "provider_unavailable",
        })
    }

    /// Whether a call whose retries ran out should wait for `provider`
    /// instead of spending its job's attempt: the provider is down or
    /// paused (see [`down`](Self::down)), or it may be: every call this
    /// daemon made to it lately failed, too few of them yet to decide, the
    /// first less than `VERDICT_WINDOW` ago. That is how an outage starts:
    /// the calls of the jobs that started with this one are still coming
    /// in, and the breaker they open must not find this job's attempt
    /// already spent. Such a job waits `VERDICT_WAIT`, its worker freed for
    /// the calls that decide. One connection that fails on its own, on a
    /// quiet daemon, spends its attempts as before once the window is past.
    pub async fn outage(&self, provider: &str) -> Option<Wait> {
        if let Some(wait) = self.down(provider).await {
            return Some(wait);
        }
        let local = self.local();
        let l = local.get(provider)?;
        let (first, _) = l.calls.front()?;
        let suspect = (l.calls.len() as u32) < self.settings.min_calls
            && l.calls.iter().all(|(_, failed)| *failed)
            && first.elapsed() < VERDICT_WINDOW;
        suspect.then(|| Wait {
            until: Utc::now() + chrono::Duration::from_std(VERDICT_WAIT).unwrap_or_default(),
            reason: "provider_unavailable",
        })
    }

    /// Records what a call to `provider` came to, tripping, pausing or
    /// closing the provider's breaker as it says.
    pub async fn record<T>(&self, provider: &str, result: &Result<T, ProviderError>) {
        let seen = seen(result);
        if let Seen::RateLimited(after) = seen {
            let until = Utc::now()
                + chrono::Duration::from_std(after.unwrap_or(Duration::from_secs(30)))
                    .unwrap_or_default();
            self.pause(provider, until).await;
            return;
        }
        let failed = seen == Seen::Down;
        let (trip, probed_ok, probed_failed) = {
            let mut local = self.local();
            let l = local.entry(provider.to_owned()).or_default();
            let now = Instant::now();
            l.calls.push_back((now, failed));
            // The last 2 × min_calls calls within the window: a sharp
            // outage after a busy spell trips after ~min_calls failures,
            // not after as many failures as there were successes.
            let keep = (self.settings.min_calls as usize * 2).max(1);
            while l.calls.len() > keep
                || l.calls
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > self.settings.window)
            {
                l.calls.pop_front();
            }
            let total = l.calls.len() as u32;
            let failures = l.calls.iter().filter(|(_, f)| *f).count() as u32;
            let trip = failed
                && total >= self.settings.min_calls
                && f64::from(failures) >= self.settings.failure_ratio * f64::from(total);
            if failed {
                l.probe_failures += 1;
            } else {
                l.probe_successes += 1;
            }
            (trip, l.probe_successes, l.probe_failures)
        };
        let Some(h) = self.health(provider).await else {
            if trip {
                self.trip(provider).await;
            }
            return;
        };
        let probing = h.breaker == "half_open" && h.probe_holder == Some(self.id);
        // Probes decide by count, not by the first answer: a provider that
        // is up but flaky (a few 5xx among many 200s) closes the breaker,
        // one that is still down opens it again, for longer.
        if probing && probed_failed >= self.settings.probes {
            self.trip(provider).await;
        } else if probing && probed_ok >= self.settings.probes {
            self.close(provider).await;
        } else if trip && h.breaker == "closed" {
            self.trip(provider).await;
        }
    }

    async fn trip(&self, provider: &str) {
        let outcome = entry(
            AuditAction::ProviderBreakerOpened,
            AuditOutcome::Failed,
            provider,
        );
        let reason = "too many failed calls (5xx, timeouts, connection errors)";
        let result = async {
            let mut tx = self.queue_pool.begin().await?;
            let opened = dashtam_store::providers::trip_breaker(
                &mut tx,
                provider,
                self.settings.cooldown,
                self.settings.max_cooldown,
                reason,
                self.id,
                &outcome,
            )
            .await?;
            let mut snoozed = 0;
            if let Some(h) = &opened {
                let until = h.probe_at.unwrap_or_else(Utc::now);
                snoozed = ops::snooze_pending(
                    &mut *tx,
                    provider,
                    until,
                    &serde_json::json!({ "reason": "provider_unavailable", "until": until }),
                )
                .await
                .map_err(|e| dashtam_store::StoreError::Conflict(e.to_string()))?;
            }
            tx.commit().await?;
            Ok::<_, dashtam_store::StoreError>((opened, snoozed))
        }
        .await;
        match result {
            Ok((Some(h), snoozed)) => {
                warn!(provider, probe_at = ?h.probe_at, trips = h.trips, snoozed, "provider breaker opened");
                METRICS
                    .provider_breaker_transitions
                    .with_label_values(&[provider, "open"])
                    .inc();
            }
            Ok((None, _)) => {}
            Err(e) => warn!(error = %e, provider, "could not open the provider's breaker"),
        }
        self.local()
            .entry(provider.to_owned())
            .or_default()
            .calls
            .clear();
        self.forget_shared();
    }

    async fn close(&self, provider: &str) {
        let outcome = entry(
            AuditAction::ProviderBreakerClosed,
            AuditOutcome::Succeeded,
            provider,
        );
        match self.store.close_breaker(provider, self.id, &outcome).await {
            Ok(true) => {
                info!(provider, "provider breaker closed");
                METRICS
                    .provider_breaker_transitions
                    .with_label_values(&[provider, "closed"])
                    .inc();
                match ops::wake_snoozed(&self.queue_pool, provider).await {
                    Ok(n) if n > 0 => info!(provider, woken = n, "snoozed jobs woken"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, provider, "could not wake snoozed jobs"),
                }
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, provider, "could not close the provider's breaker"),
        }
        self.forget_shared();
    }

    async fn pause(&self, provider: &str, until: DateTime<Utc>) {
        let waiting = serde_json::json!({ "reason": "provider_rate_limited", "until": until });
        let result = async {
            self.store.pause_provider(provider, until).await?;
            ops::snooze_pending(&self.queue_pool, provider, until, &waiting)
                .await
                .map_err(|e| dashtam_store::StoreError::Conflict(e.to_string()))
        }
        .await;
        match result {
            Ok(snoozed) => {
                info!(provider, %until, snoozed, "provider paused by its rate limit");
                METRICS
                    .provider_breaker_transitions
                    .with_label_values(&[provider, "paused"])
                    .inc();
            }
            Err(e) => warn!(error = %e, provider, "could not pause the provider"),
        }
        self.forget_shared();
    }
}

fn entry(action: AuditAction, outcome: AuditOutcome, provider: &str) -> AuditEntry {
    AuditEntry {
        action,
        phase: AuditPhase::Outcome,
        outcome,
        actor: "system:worker".into(),
        resource_type: "provider",
        resource_id: provider.to_owned(),
        correlation_id: None,
        reason: None,
        context: serde_json::json!({}),
    }
}
