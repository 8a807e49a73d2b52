//! The sandbox provider: an HTTP server of ours that speaks Plaid's
//! `/transactions/sync` wire format faithfully, with deterministic seeded
//! data of any size and fault injection. Tests, the demo and the benchmarks
//! point the real provider adapter at it.
//!
//! Architecture invariant: nothing here is used by the daemon's production
//! paths; the adapters must work unchanged against the real provider.

mod data;
mod plaid;
mod schwab;
mod webhooks;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use data::ItemSpec;
pub(crate) use data::mix;
pub use schwab::{ExpiredRefresh, GrantView, OAuthSettings, Rotation};

/// Sandbox-wide settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// The API keys clients must present (`client_id` / `secret`).
    pub client_id: String,
    pub secret: String,
    /// Seed of all generated data: the same seed gives the same data.
    pub seed: u64,
    /// Accounts per item unless the item asks otherwise.
    pub accounts_per_item: u32,
    /// Transactions per account unless the item asks otherwise.
    pub transactions_per_account: u32,
    /// Token lifetimes and rotation of the OAuth (Schwab-style) provider.
    pub oauth: OAuthSettings,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            client_id: "dashtam-sandbox-client".into(),
            secret: "dashtam-sandbox-secret".into(),
            seed: 42,
            accounts_per_item: 3,
            transactions_per_account: 200,
            oauth: OAuthSettings::default(),
        }
    }
}

/// Faults injected into `/transactions/sync`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every data response.
    pub latency_ms: u64,
    /// Added to token, public-token exchange and revocation responses (a
    /// slow authorization server).
    #[serde(default)]
    pub auth_latency_ms: u64,
    /// Probability (0–1) of a 500.
    pub error_rate: f64,
    /// Probability (0–1) of a 429.
    pub rate_limit_rate: f64,
    /// `Retry-After` seconds sent with a 429 (0: none, as Plaid sends).
    pub retry_after_secs: u64,
    /// Send that `Retry-After` as an HTTP-date (the time it ends) instead of
    /// seconds: RFC 9110 allows both.
    #[serde(default)]
    pub retry_after_http_date: bool,
    /// Probability (0–1) that a paginating call finds the data changed.
    pub mutation_rate: f64,
    /// Faults for the next calls, in order, before the random ones apply.
    pub script: VecDeque<ScriptedFault>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum ScriptedFault {
    ServerError,
    RateLimited {
        retry_after_secs: u64,
        /// As an HTTP-date instead of seconds.
        #[serde(default)]
        http_date: bool,
    },
    MutationDuringPagination,
}

/// Call counters, for tests and the demo.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub transactions_sync_calls: u64,
    pub exchange_calls: u64,
    pub faults_injected: u64,
    pub accounts_get_calls: u64,
    pub verification_key_calls: u64,
    /// Webhooks the receiver accepted (2xx), and those given up on.
    pub webhooks_delivered: u64,
    pub webhooks_failed: u64,
    pub by_item: HashMap<String, u64>,
    /// `/transactions/sync` calls by arrival, in 100 ms slices since the
    /// Unix epoch, the last ten minutes: the rate the provider saw.
    pub sync_calls_by_decisecond: std::collections::BTreeMap<u64, u64>,
}

/// How far back the per-slice call counts reach (100 ms slices): ten
/// minutes, so a long-running sandbox does not grow them without end.
const CALL_SLICES_KEPT: u64 = 6_000;

impl Stats {
    /// Counts a `/transactions/sync` call in its 100 ms slice, forgetting
    /// slices older than [`CALL_SLICES_KEPT`].
    pub(crate) fn count_sync_call(&mut self, decisecond: u64) {
        *self.sync_calls_by_decisecond.entry(decisecond).or_default() += 1;
        let oldest = decisecond.saturating_sub(CALL_SLICES_KEPT);
        while self
            .sync_calls_by_decisecond
            .first_key_value()
            .is_some_and(|(&k, _)| k < oldest)
        {
            self.sync_calls_by_decisecond.pop_first();
        }
    }

    /// The most `/transactions/sync` calls that arrived within any second
    /// (ten consecutive 100 ms slices).
    pub fn peak_sync_calls_per_second(&self) -> u64 {
        self.sync_calls_by_decisecond
            .keys()
            .map(|&start| {
                self.sync_calls_by_decisecond
                    .range(start..start + 10)
                    .map(|(_, n)| n)
                    .sum()
            })
            .max()
            .unwrap_or(0)
    }
}

pub(crate) struct Inner {
    pub config: SandboxConfig,
    pub items: HashMap<String, data::Item>,
    /// Public tokens not yet exchanged: the item to make, and its webhook.
    pub public_tokens: HashMap<String, (ItemSpec, Option<String>)>,
    pub faults: Faults,
    pub stats: Stats,
    pub rng: fastrand::Rng,
    pub next_item: u64,
    pub oauth: schwab::OAuthState,
}

/// Shared handle on the sandbox's state.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Mutex<Inner>>,
    /// Signs the webhooks (Plaid's `Plaid-Verification`).
    key: Arc<webhooks::SigningKey>,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Self {
        let rng = fastrand::Rng::with_seed(config.seed);
        let oauth = schwab::OAuthState::new(config.oauth.clone());
        Self {
            inner: Arc::new(Mutex::new(Inner {
                config,
                items: HashMap::new(),
                public_tokens: HashMap::new(),
                faults: Faults::default(),
                stats: Stats::default(),
                rng,
                next_item: 0,
                oauth,
            })),
            key: Arc::new(webhooks::SigningKey::generate()),
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn router(&self) -> Router {
        plaid::router(self.clone())
            .merge(schwab::router(self.clone()))
            .route("/healthz", axum::routing::get(|| async { "ok" }))
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn push_fault(&self, fault: ScriptedFault) {
        self.lock().faults.script.push_back(fault);
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub fn config(&self) -> SandboxConfig {
        self.lock().config.clone()
    }

    /// Creates an item directly (what `/sandbox/public_token/create` plus the
    /// exchange do) and returns its access token.
    pub fn create_item(&self, spec: ItemSpec) -> String {
        data::create_item(&mut self.lock(), spec)
    }

    /// Drops an item: its access token is refused from now on (as after the
    /// user revoked access at the institution).
    pub fn forget_item(&self, access_token: &str) -> bool {
        self.lock().items.remove(access_token).is_some()
    }

    /// Access tokens of every item, oldest first.
    pub fn access_tokens(&self) -> Vec<String> {
        let inner = self.lock();
        let mut items: Vec<(&String, u64)> =
            inner.items.iter().map(|(t, i)| (t, i.index())).collect();
        items.sort_by_key(|(_, i)| *i);
        items.into_iter().map(|(t, _)| t.clone()).collect()
    }

    /// What a perfect sync of every item would hold now: each live
    /// transaction by (account id, transaction id), with its amount in
    /// Plaid's sign (positive = money out) and whether it is pending. The
    /// ground truth chaos runs check a daemon's database against.
    pub fn ground_truth(&self) -> HashMap<(String, String), (rust_decimal::Decimal, bool)> {
        let inner = self.lock();
        let seed = inner.config.seed;
        let mut truth = HashMap::new();
        for item in inner.items.values() {
            for event in item.events(seed, 0, item.len()) {
                match event {
                    data::Event::Added(t) | data::Event::Modified(t) => {
                        truth.insert((t.account_id, t.transaction_id), (t.amount, t.pending));
                    }
                    data::Event::Removed {
                        transaction_id,
                        account_id,
                    } => {
                        truth.remove(&(account_id, transaction_id));
                    }
                }
            }
        }
        truth
    }

    /// Moves an item's data forward in time; see [`data::Advance`].
    /// An item that changed and has a webhook gets `SYNC_UPDATES_AVAILABLE`.
    pub fn advance(&self, access_token: &str, advance: data::Advance) -> Option<data::Advanced> {
        let (done, webhook) = {
            let mut inner = self.lock();
            let done = data::advance(&mut inner, access_token, advance)?;
            let webhook = done
                .changed()
                .then(|| inner.items.get(access_token).and_then(plaid::sync_updates))
                .flatten();
            (done, webhook)
        };
        if let Some((url, body)) = webhook {
            self.deliver(url, body);
        }
        Some(done)
    }

    /// Advances every item (and OAuth grant) by `step`; returns how many
    /// there were.
    pub fn advance_all(&self, step: &data::Advance) -> usize {
        let mut webhooks = Vec::new();
        let count = {
            let mut inner = self.lock();
            let tokens: Vec<String> = inner.items.keys().cloned().collect();
            for token in &tokens {
                let changed =
                    data::advance(&mut inner, token, step.clone()).is_some_and(|d| d.changed());
                if changed && let Some(w) = inner.items.get(token).and_then(plaid::sync_updates) {
                    webhooks.push(w);
                }
            }
            let grants = inner.oauth.grant_count();
            for g in 0..grants {
                schwab::advance_grant(&mut inner, g, step.post_pending, step.add);
            }
            tokens.len() + grants
        };
        for (url, body) in webhooks {
            self.deliver(url, body);
        }
        count
    }

    /// Lets time pass at the provider: every `every`, each item's pending
    /// transactions post, and a few are modified, removed and added, until
    /// `stop` resolves.
    pub async fn evolve(&self, every: Duration, stop: impl std::future::Future<Output = ()>) {
        let step = data::Advance {
            post_pending: true,
            modify: 1,
            remove: 1,
            add: 5,
        };
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let items = self.advance_all(&step);
                    tracing::debug!(items, "sandbox data moved forward");
                }
                _ = &mut stop => return,
            }
        }
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `addr` (port 0 for any) and serves in a background task until
    /// the returned guard's token is cancelled.
    pub async fn spawn(
        self,
        addr: SocketAddr,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = self.serve(listener, shutdown).await {
                tracing::error!(error = %e, "sandbox server failed");
            }
        });
        Ok(local)
    }
}

/// A `Retry-After` of `secs`: delay-seconds, or the HTTP-date it ends at.
pub(crate) fn retry_after(secs: u64, http_date: bool) -> axum::http::HeaderValue {
    if http_date {
        let at = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
        axum::http::HeaderValue::from_str(&httpdate::fmt_http_date(at))
            .unwrap_or_else(|_| axum::http::HeaderValue::from(secs))
    } else {
        axum::http::HeaderValue::from(secs)
    }
}

/// The fault for the next call: a scripted one first, else a random one
/// by the configured rates (a mutation only while `paginating`).
pub(crate) fn draw_fault(
    faults: &mut Faults,
    rng: &mut fastrand::Rng,
    paginating: bool,
) -> Option<ScriptedFault> {
    match faults.script.pop_front() {
        Some(f) => Some(f),
        None if rng.f64() < faults.error_rate => Some(ScriptedFault::ServerError),
        None if rng.f64() < faults.rate_limit_rate => Some(ScriptedFault::RateLimited {
            retry_after_secs: faults.retry_after_secs,
            http_date: faults.retry_after_http_date,
        }),
        None if paginating && rng.f64() < faults.mutation_rate => {
            Some(ScriptedFault::MutationDuringPagination)
        }
        None => None,
    }
}

pub(crate) fn latency(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl Sandbox {
    /// Waits the configured authorization-server latency.
    pub(crate) async fn auth_latency(&self) {
        let ms = self.lock().faults.auth_latency_ms;
        if let Some(d) = latency(ms) {
            tokio::time::sleep(d).await;
        }
    }
}

pub use data::{Advance, Advanced};

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn evolving_moves_every_item_forward() {
        let sandbox = Sandbox::new(SandboxConfig::default());
        let a = sandbox.create_item(ItemSpec::default());
        let b = sandbox.create_item(ItemSpec::default());
        let len = |t: &str| sandbox.lock().items[t].len();
        let (a0, b0) = (len(&a), len(&b));
        let s = sandbox.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let st = stop.clone();
        let task =
            tokio::spawn(async move { s.evolve(Duration::from_secs(60), st.cancelled()).await });
        tokio::time::sleep(Duration::from_secs(61)).await;
        stop.cancel();
        task.await.unwrap();
        assert!(len(&a) > a0 && len(&b) > b0);
    }
}
