//! Layered configuration: built-in defaults (`config/default.toml`), then an
//! optional file, then `DASHTAM__SECTION__KEY` environment variables.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use dashtam_domain::model::ProviderKind;
use dashtam_telemetry::LogFormat;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod units;
pub use units::{Cron, Days, Hours, JwtAlgorithm, Millis, Minutes, Secs};

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

pub const DEFAULTS: &str = include_str!("../../../config/default.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub crypto: CryptoConfig,
    pub worker: WorkerSection,
    pub jobs: JobsConfig,
    pub sync: SyncConfig,
    pub providers: ProvidersConfig,
    pub sandbox: SandboxSection,
    pub tokens: TokensConfig,
    pub breaker: BreakerConfig,
    pub budgets: BudgetsConfig,
    pub scheduler: SchedulerConfig,
    pub secrets: SecretsConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub tracing: dashtam_telemetry::TraceConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub refresh_secs: Secs<1>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    pub window_secs: Secs<1>,
    pub min_calls: u32,
    pub failure_ratio: f64,
    pub cooldown_secs: Secs<1>,
    pub max_cooldown_secs: Secs<1>,
    pub probes: u32,
}

impl BreakerConfig {
    pub fn settings(&self) -> dashtam_worker::gate::BreakerSettings {
        dashtam_worker::gate::BreakerSettings {
            window: self.window_secs.get(),
            min_calls: self.min_calls,
            failure_ratio: self.failure_ratio,
            cooldown: self.cooldown_secs.get(),
            max_cooldown: self.max_cooldown_secs.get(),
            probes: self.probes,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    pub max_wait_ms: Millis,
    pub slot_lease_secs: Secs<1>,
    #[serde(default)]
    pub providers: BTreeMap<ProviderKind, ProviderBudgetConfig>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderBudgetConfig {
    pub requests_per_sec: f64,
    pub burst: u32,
    #[serde(default)]
    pub concurrency: u32,
}

impl Config {
    /// The providers' budgets for the operators' view.
    pub fn budget_book(&self) -> dashtam_api::BudgetBook {
        let rl = &self.rate_limit;
        dashtam_api::BudgetBook {
            limits: self
                .budgets
                .providers
                .iter()
                .map(|(p, b)| {
                    (
                        p.as_str().to_owned(),
                        dashtam_api::BudgetLimit {
                            requests_per_sec: b.requests_per_sec,
                            burst: b.burst,
                            concurrency: b.concurrency,
                        },
                    )
                })
                .collect(),
            redis: dashtam_buckets::RedisBuckets::new(&rl.redis_url, rl.timeout_ms.get()).ok(),
            key_prefix: rl.key_prefix.clone(),
        }
    }

    /// The providers' budgets, in Redis under the rate limits' prefix.
    pub fn budget_settings(&self) -> dashtam_worker::budget::BudgetSettings {
        let b = &self.budgets;
        dashtam_worker::budget::BudgetSettings {
            providers: b
                .providers
                .iter()
                .map(|(p, c)| {
                    (
                        p.as_str().to_owned(),
                        dashtam_worker::budget::ProviderBudget {
                            per_sec: c.requests_per_sec,
                            burst: c.burst,
                            concurrency: c.concurrency,
                        },
                    )
                })
                .collect(),
            redis_url: self.rate_limit.redis_url.clone(),
            key_prefix: self.rate_limit.key_prefix.clone(),
            redis_timeout: self.rate_limit.timeout_ms.get(),
            max_wait: b.max_wait_ms.get(),
            slot_lease: b.slot_lease_secs.get(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    pub refresh_lead_secs: Secs,
    pub expiry_margin_secs: Secs,
    pub lease_secs: Secs<1>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    pub lease_ttl_secs: Secs<1>,
    pub renew_every_ms: Millis<1>,
    pub max_catch_up: usize,
    pub reauth_warning_hours: Hours,
    pub sync_spread_secs: Secs,
    pub max_syncs_per_user_per_tick: u32,
    pub cycles: CyclesConfig,
    pub sync_interval_minutes: HashMap<ProviderKind, Minutes<1>>,
    /// Plaid's interval while its webhooks are registered
    /// (`providers.plaid.webhook_url`): the sweep is then only the safety
    /// net for a webhook lost on the way.
    pub webhook_safety_net_minutes: Minutes<1>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CyclesConfig {
    pub token_refresh: Cron,
    pub stale_sync: Cron,
    pub prune: Cron,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecretSourceKind {
    Config,
    Env,
    Aws,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    pub source: SecretSourceKind,
    pub ttl_secs: Secs,
    pub dotenv: std::path::PathBuf,
    pub aws: AwsSecretsConfig,
    pub ids: SecretIds,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSecretsConfig {
    pub region: String,
    pub endpoint_url: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretIds {
    pub jwt_secret: String,
    pub jwt_public_keys: String,
    pub encryption_keys: String,
    pub plaid_secret: String,
    pub schwab_secret: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_secs: Secs<1>,
    pub slow_statement_ms: Millis,
    pub transaction_pooler: bool,
    pub direct_url: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    pub header_read_timeout_secs: Secs<1>,
    pub body_read_timeout_secs: Secs<1>,
    pub shutdown_drain_secs: Secs,
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt_secret: SecretString,
    pub issuer: String,
    pub audience: String,
    pub algorithms: Vec<JwtAlgorithm>,
    pub public_keys: String,
}

impl AuthConfig {
    /// Whether the allow-list needs (the HS256 secret, the public keys).
    pub fn needs(&self) -> (bool, bool) {
        (
            self.algorithms
                .iter()
                .any(|a| a.0 == jsonwebtoken::Algorithm::HS256),
            self.algorithms.iter().any(|a| {
                matches!(
                    a.0,
                    jsonwebtoken::Algorithm::RS256 | jsonwebtoken::Algorithm::ES256
                )
            }),
        )
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub redis_url: String,
    pub key_prefix: String,
    pub enqueue_burst: u32,
    pub enqueue_per_sec: f64,
    pub write_burst: u32,
    pub write_per_sec: f64,
    pub timeout_ms: Millis<1>,
    pub log_every_secs: Secs<1>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoConfig {
    pub active_key: String,
    #[serde(default)]
    pub keys: HashMap<String, SecretString>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub poll_interval_ms: Millis<10>,
    pub heartbeat_interval_secs: Secs<1>,
    pub orphan_timeout_secs: Secs<1>,
    pub rescue_interval_secs: Secs<1>,
    pub shutdown_timeout_secs: Secs,
    pub backoff_base_ms: Millis<1>,
    pub backoff_max_secs: Secs<1>,
    pub completion_batch: usize,
    pub synchronous_commit: bool,
    pub retain_succeeded_hours: Hours,
    pub retain_failed_hours: Hours,
    pub prune_batch: i64,
    pub max_connections: u32,
    pub queues: BTreeMap<String, QueueSection>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    pub concurrency: usize,
    pub fetch_batch: usize,
    #[serde(default)]
    pub prefetch: usize,
    /// Most of one owner's jobs running at once in this queue, across every
    /// daemon (0: no cap).
    #[serde(default)]
    pub max_running_per_owner: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub sync_max_attempts: i32,
    pub token_refresh_max_attempts: i32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    pub page_size: u32,
    pub page_retries: u32,
    pub max_restarts: u32,
    pub window_overlap_hours: Hours,
    pub initial_history_days: Days,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersConfig {
    pub plaid: PlaidSection,
    pub schwab: SchwabSection,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchwabSection {
    pub base_url: String,
    pub app_key: String,
    pub secret: SecretString,
    pub redirect_uri: String,
    pub timeout_secs: Secs<1>,
    pub refresh_token_lifetime_secs: Secs<1>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaidSection {
    pub base_url: String,
    pub client_id: String,
    pub secret: SecretString,
    pub timeout_secs: Secs<1>,
    /// Our public `/api/v1/webhooks/plaid` URL, registered on every new
    /// connection (`/item/webhook/update`); unset: none is registered.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    pub listen: SocketAddr,
    pub client_id: String,
    pub secret: String,
    pub seed: u64,
    pub accounts_per_item: u32,
    pub transactions_per_account: u32,
    pub evolve_every_secs: Secs,
    pub oauth: dashtam_sandbox::OAuthSettings,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

impl Config {
    /// Defaults, then `file` (which must exist if given), then the
    /// environment; validated.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(file, Env::prefixed("DASHTAM__").split("__"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> anyhow::Result<Self> {
        let mut fig = Figment::new().merge(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.is_file() {
                bail!("configuration file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        let config: Config = fig
            .merge(env)
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {}", describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, msg: &str| {
            if !ok {
                problems.push(format!("{key}: {msg}"));
            }
        };
        check(
            (0.0..=1.0).contains(&self.tracing.sample_ratio),
            "tracing.sample_ratio",
            "must be between 0 and 1",
        );
        check(
            !self.tracing.enabled()
                || self.tracing.otlp_endpoint.starts_with("http://")
                || self.tracing.otlp_endpoint.starts_with("https://"),
            "tracing.otlp_endpoint",
            "must be an http:// or https:// URL (the collector's OTLP/HTTP port, e.g. http://collector:4318)",
        );
        check(
            self.database.max_connections >= 2,
            "database.max_connections",
            "must be at least 2",
        );
        check(
            self.tokens.lease_secs.get()
                > self
                    .providers
                    .plaid
                    .timeout_secs
                    .get()
                    .max(self.providers.schwab.timeout_secs.get()),
            "tokens.lease_secs",
            "must be longer than every provider's timeout_secs",
        );
        check(
            !self.plaid_webhooks_on()
                || self
                    .providers
                    .plaid
                    .webhook_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://") || u.starts_with("http://")),
            "providers.plaid.webhook_url",
            "must be an http(s) URL (our public /api/v1/webhooks/plaid) or empty",
        );
        check(
            self.budgets.providers.values().all(|b| {
                b.requests_per_sec.is_finite() && b.requests_per_sec > 0.0 && b.burst >= 1
            }),
            "budgets.providers",
            "each budget needs requests_per_sec > 0 and burst >= 1",
        );
        check(
            self.breaker.failure_ratio > 0.0 && self.breaker.failure_ratio <= 1.0,
            "breaker.failure_ratio",
            "must be above 0 and at most 1",
        );
        check(
            self.breaker.min_calls >= 1 && self.breaker.probes >= 1,
            "breaker.min_calls",
            "min_calls and probes must be at least 1",
        );
        check(
            self.breaker.max_cooldown_secs >= self.breaker.cooldown_secs,
            "breaker.max_cooldown_secs",
            "must be at least breaker.cooldown_secs",
        );
        check(
            self.http.body_limit_bytes >= 1024,
            "http.body_limit_bytes",
            "must be at least 1024",
        );
        check(
            self.worker.orphan_timeout_secs.get() >= 2 * self.worker.heartbeat_interval_secs.get(),
            "worker.orphan_timeout_secs",
            "must be at least twice worker.heartbeat_interval_secs",
        );
        check(
            self.worker.backoff_max_secs.get() >= self.worker.backoff_base_ms.get(),
            "worker.backoff_max_secs",
            "must not be below worker.backoff_base_ms",
        );
        check(
            self.worker.completion_batch >= 1,
            "worker.completion_batch",
            "must be at least 1",
        );
        check(
            self.worker
                .queues
                .contains_key(dashtam_domain::jobs::JobKind::Sync.queue()),
            "worker.queues.sync",
            "the sync queue must be configured",
        );
        for (name, q) in &self.worker.queues {
            check(
                q.concurrency >= 1,
                &format!("worker.queues.{name}.concurrency"),
                "must be at least 1",
            );
            check(
                q.fetch_batch >= 1,
                &format!("worker.queues.{name}.fetch_batch"),
                "must be at least 1",
            );
        }
        check(
            self.jobs.sync_max_attempts >= 1,
            "jobs.sync_max_attempts",
            "must be at least 1",
        );
        check(
            (1..=500).contains(&self.sync.page_size),
            "sync.page_size",
            "must be between 1 and 500",
        );
        check(
            self.providers.plaid.base_url.starts_with("http://")
                || self.providers.plaid.base_url.starts_with("https://"),
            "providers.plaid.base_url",
            "must be an http:// or https:// URL",
        );
        let rl = &self.rate_limit;
        check(
            rl.enqueue_burst >= 1 && rl.write_burst >= 1,
            "rate_limit.enqueue_burst",
            "bursts must be at least 1",
        );
        check(
            rl.enqueue_per_sec > 0.0 && rl.write_per_sec > 0.0,
            "rate_limit.enqueue_per_sec",
            "rates must be above 0",
        );
        check(
            !rl.enabled
                || rl.redis_url.starts_with("redis://")
                || rl.redis_url.starts_with("rediss://"),
            "rate_limit.redis_url",
            "must be a redis:// or rediss:// URL",
        );
        check(
            !self.auth.algorithms.is_empty(),
            "auth.algorithms",
            "must list one or more of HS256, RS256, ES256",
        );
        let sc = &self.scheduler;
        check(
            sc.renew_every_ms.get() * 2 <= sc.lease_ttl_secs.get(),
            "scheduler.renew_every_ms",
            "must be at most half of scheduler.lease_ttl_secs",
        );
        check(
            sc.max_catch_up >= 1,
            "scheduler.max_catch_up",
            "must be at least 1",
        );
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration:\n  {}", problems.join("\n  "))
        }
    }

    /// The API's rate limits, if enabled.
    pub fn rate_limit_settings(&self) -> Option<dashtam_api::ratelimit::RateLimitSettings> {
        use dashtam_api::ratelimit::{Limit, RateLimitSettings};
        let rl = &self.rate_limit;
        rl.enabled.then(|| RateLimitSettings {
            redis_url: rl.redis_url.clone(),
            key_prefix: rl.key_prefix.clone(),
            enqueue: Limit {
                per_sec: rl.enqueue_per_sec,
                burst: rl.enqueue_burst,
            },
            write: Limit {
                per_sec: rl.write_per_sec,
                burst: rl.write_burst,
            },
            timeout: rl.timeout_ms.get(),
            log_every: rl.log_every_secs.get(),
        })
    }

    /// The scheduler's settings; `holder` names this process in the lease.
    pub fn scheduler_settings(&self, holder: String) -> dashtam_scheduler::SchedulerSettings {
        use dashtam_scheduler::{Cycle, CycleSpec};
        let sc = &self.scheduler;
        let cycles = [
            (Cycle::TokenRefresh, &sc.cycles.token_refresh),
            (Cycle::StaleSync, &sc.cycles.stale_sync),
            (Cycle::Prune, &sc.cycles.prune),
        ]
        .into_iter()
        .filter_map(|(cycle, cron)| {
            cron.schedule().map(|schedule| CycleSpec {
                cycle,
                schedule: schedule.clone(),
            })
        })
        .collect();
        dashtam_scheduler::SchedulerSettings {
            holder,
            lease_ttl: sc.lease_ttl_secs.get(),
            renew_every: sc.renew_every_ms.get(),
            max_catch_up: sc.max_catch_up,
            cycles,
            refresh_lead: self.tokens.refresh_lead_secs.get(),
            reauth_warning: sc.reauth_warning_hours.get(),
            token_refresh_max_attempts: self.jobs.token_refresh_max_attempts,
            sync_max_attempts: self.jobs.sync_max_attempts,
            sync_intervals: sc
                .sync_interval_minutes
                .iter()
                .map(|(&p, m)| {
                    let every = match p {
                        ProviderKind::Plaid if self.plaid_webhooks_on() => {
                            (*m).max(sc.webhook_safety_net_minutes)
                        }
                        _ => *m,
                    };
                    (p, every.get())
                })
                .collect(),
            sync_spread: sc.sync_spread_secs.get(),
            syncs_per_user: sc.max_syncs_per_user_per_tick,
            retention: self.retention(),
            idempotency_ttl: IDEMPOTENCY_KEY_TTL,
        }
    }

    /// The label values every metric series is made of, known from the
    /// configuration: exported at zero from the first scrape.
    pub fn known_labels(&self) -> dashtam_telemetry::metrics::KnownLabels {
        use dashtam_domain::jobs::JobKind;
        use dashtam_domain::model::ConnectionStatus;
        use dashtam_domain::schedule::Cycle;
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        dashtam_telemetry::metrics::KnownLabels {
            queues: self
                .worker
                .queues
                .keys()
                .map(|q| {
                    let kinds = JobKind::ALL
                        .into_iter()
                        .filter(|k| k.queue() == q)
                        .map(|k| k.as_str().to_owned())
                        .collect();
                    (q.clone(), kinds)
                })
                .collect(),
            providers: names(&ProviderKind::ALL.map(ProviderKind::as_str)),
            connection_statuses: names(&ConnectionStatus::ALL.map(ConnectionStatus::as_str)),
            webhook_providers: names(&[ProviderKind::Plaid.as_str()]),
            cycles: names(&Cycle::ALL.map(Cycle::as_str)),
            provider_endpoints: {
                use dashtam_providers::endpoints::{plaid, schwab};
                let of = |p: ProviderKind, e: &[&str]| {
                    e.iter()
                        .map(move |e| (p.as_str().to_owned(), (*e).to_owned()))
                        .collect::<Vec<_>>()
                };
                [
                    of(ProviderKind::Plaid, &plaid::ALL),
                    of(ProviderKind::Schwab, &schwab::ALL),
                ]
                .concat()
            },
        }
    }

    /// Whether new Plaid connections get our webhook registered.
    pub fn plaid_webhooks_on(&self) -> bool {
        self.providers
            .plaid
            .webhook_url
            .as_deref()
            .is_some_and(|u| !u.is_empty())
    }

    pub fn retention(&self) -> dashtam_queue::Retention {
        let w = &self.worker;
        dashtam_queue::Retention {
            succeeded: w.retain_succeeded_hours.get(),
            failed: w.retain_failed_hours.get(),
            batch: w.prune_batch,
        }
    }

    /// The JWT secret, or a message saying how to set it.
    pub fn jwt_secret(&self) -> anyhow::Result<SecretString> {
        let s = &self.auth.jwt_secret;
        if s.expose_secret().len() < 32 {
            bail!(
                "auth.jwt_secret is not set (or shorter than 32 characters): set DASHTAM__AUTH__JWT_SECRET"
            );
        }
        Ok(s.clone())
    }

    /// The RS256/ES256 public keyring, or a message saying how to set it.
    pub fn jwt_public_keys(&self) -> anyhow::Result<SecretString> {
        let keys = &self.auth.public_keys;
        if keys.is_empty() {
            bail!(
                "auth.algorithms allows RS256/ES256 but auth.public_keys is empty: set it to \
                 {{\"keys\": [{{\"kid\": …, \"alg\": \"RS256\", \"pem\": …}}]}}"
            );
        }
        dashtam_api::auth::parse_keyring(keys)
            .map_err(|e| anyhow::anyhow!("auth.public_keys: {e}"))?;
        Ok(SecretString::from(keys.as_str()))
    }

    pub fn cipher(&self) -> anyhow::Result<dashtam_store::Cipher> {
        if self.crypto.active_key.is_empty() || self.crypto.keys.is_empty() {
            bail!(
                "crypto.active_key and crypto.keys are not set: generate a key with `dashtam keys generate` \
                 and set DASHTAM__CRYPTO__ACTIVE_KEY=k1 DASHTAM__CRYPTO__KEYS__K1=<key>"
            );
        }
        dashtam_store::Cipher::new(&self.crypto.active_key, &self.crypto.keys)
            .with_context(|| "crypto.keys")
    }

    /// Points every provider adapter at a sandbox provider at `url` with
    /// its API keys (demo, benchmarks, tests).
    pub fn use_sandbox(&mut self, url: &str, sandbox: &dashtam_sandbox::SandboxConfig) {
        let p = &mut self.providers;
        p.plaid.base_url = url.to_owned();
        p.plaid.client_id = sandbox.client_id.clone();
        p.plaid.secret = sandbox.secret.clone().into();
        p.schwab.base_url = url.to_owned();
        p.schwab.app_key = sandbox.client_id.clone();
        p.schwab.secret = sandbox.secret.clone().into();
    }

    pub fn worker_config(&self, name: String) -> dashtam_queue::WorkerConfig {
        let w = &self.worker;
        dashtam_queue::WorkerConfig {
            name,
            queues: w
                .queues
                .iter()
                .map(|(name, q)| dashtam_queue::QueueConfig {
                    name: name.clone(),
                    concurrency: q.concurrency,
                    fetch_batch: q.fetch_batch,
                    prefetch: q.prefetch,
                    max_running_per_owner: q.max_running_per_owner,
                })
                .collect(),
            poll_interval: w.poll_interval_ms.get(),
            heartbeat_interval: w.heartbeat_interval_secs.get(),
            orphan_timeout: w.orphan_timeout_secs.get(),
            rescue_interval: w.rescue_interval_secs.get(),
            backoff: dashtam_queue::Backoff {
                base: w.backoff_base_ms.get(),
                max: w.backoff_max_secs.get(),
            },
            completion_batch: w.completion_batch,
            shutdown_timeout: w.shutdown_timeout_secs.get(),
        }
    }
}

/// figment's errors name the key; make the message one readable line.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                "(root)".to_owned()
            } else {
                e.path.join(".")
            };
            format!("{key}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads the configuration with exactly `vars` as DASHTAM__ variables
    /// (figment's jail serializes tests that touch the environment).
    #[allow(clippy::result_large_err)] // figment's own error type
    fn with_env(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            result = Some(Config::load(None));
            Ok(())
        });
        result.expect("jail ran")
    }

    #[test]
    fn defaults_parse_and_validate() {
        let c = with_env(&[]).unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert!(c.database.url.ends_with("/dashtam"));
        assert_eq!(c.worker.queues["sync"].concurrency, 10);
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = with_env(&[
            ("DASHTAM__HTTP__LISTEN", "0.0.0.0:9000"),
            ("DASHTAM__WORKER__QUEUES__SYNC__CONCURRENCY", "3"),
            ("DASHTAM__CRYPTO__ACTIVE_KEY", "k1"),
            (
                "DASHTAM__CRYPTO__KEYS__K1",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
        ])
        .unwrap();
        assert_eq!(c.http.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.worker.queues["sync"].concurrency, 3);
        assert!(c.cipher().is_ok());
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = with_env(&[("DASHTAM__HTTP__LISTEN", "not-an-address")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.listen"), "{e}");
        let e = with_env(&[("DASHTAM__SYNC__PAGE_SIZE", "900")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sync.page_size"), "{e}");
        let e = with_env(&[("DASHTAM__HTTP__NO_SUCH_KEY", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no_such_key"), "{e}");
    }

    /// Durations, cron expressions, algorithms and provider names are
    /// parsed when the configuration loads, and a bad one is named by its
    /// key and says what it should be.
    #[test]
    fn typed_values_are_refused_with_their_key() {
        for (var, value, key, says) in [
            (
                "DASHTAM__WORKER__POLL_INTERVAL_MS",
                "5",
                "worker.poll_interval_ms",
                "at least 10",
            ),
            (
                "DASHTAM__SCHEDULER__CYCLES__PRUNE",
                "every day",
                "scheduler.cycles.prune",
                "not a cron expression",
            ),
            (
                "DASHTAM__AUTH__ALGORITHMS",
                "[\"none\"]",
                "auth.algorithms",
                "HS256, RS256, ES256",
            ),
            (
                "DASHTAM__SCHEDULER__SYNC_INTERVAL_MINUTES__NOPE",
                "5",
                "scheduler.sync_interval_minutes",
                "plaid",
            ),
        ] {
            let e = with_env(&[(var, value)]).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{var}={value}: {e}");
        }
        let c = with_env(&[("DASHTAM__WORKER__RETAIN_FAILED_HOURS", "2")]).unwrap();
        assert_eq!(c.retention().failed, Duration::from_secs(7200));
    }

    #[test]
    fn missing_secrets_say_how_to_set_them() {
        let c = with_env(&[]).unwrap();
        assert!(
            c.jwt_secret()
                .unwrap_err()
                .to_string()
                .contains("DASHTAM__AUTH__JWT_SECRET")
        );
        assert!(
            c.cipher()
                .unwrap_err()
                .to_string()
                .contains("dashtam keys generate")
        );
    }
}
