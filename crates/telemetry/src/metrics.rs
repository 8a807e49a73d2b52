//! The process's one Prometheus registry and every metric it exports.
//! Names follow `dashtam_<subsystem>_<name>_<unit>`; labels are bounded
//! (queue, kind, outcome, provider, endpoint, status, route) — never ids.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Jobs by queue, kind and event: enqueued, started, succeeded, failed,
    /// retried, cancelled, rescued, handed_back, released.
    pub jobs: IntCounterVec,
    pub job_duration_seconds: HistogramVec,
    pub job_pickup_seconds: HistogramVec,
    pub queue_claim_seconds: HistogramVec,
    pub provider_requests: IntCounterVec,
    pub provider_request_seconds: HistogramVec,
    pub provider_breaker_transitions: IntCounterVec,
    pub provider_breaker_open: IntGaugeVec,
    pub provider_budget_decisions: IntCounterVec,
    pub webhooks: IntCounterVec,
    pub transactions_ingested: IntCounterVec,
    pub token_refreshes: IntCounterVec,
    pub scheduler_leader: IntGauge,
    pub rate_limit_decisions: IntCounterVec,
    pub queue_jobs: IntGaugeVec,
    pub queue_oldest_available_age: GaugeVec,
    pub connections: IntGaugeVec,
    pub db_pool_connections: IntGaugeVec,
    pub scheduler_ticks: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub build_info: IntGaugeVec,
    pub up: IntGauge,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn int_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

/// Short statements: a claim takes about a millisecond on a healthy table
/// and grows with dead tuples; fine buckets show by how much.
const STATEMENT: [f64; 16] = [
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25,
    0.5, 1.0,
];

const LATENCY: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("dashtam_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build_info.clone()))
            .expect("unique metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let up = IntGauge::new("dashtam_up", "1 while the process runs.").expect("valid metric");
        r.register(Box::new(up.clone())).expect("unique metric");
        up.set(1);
        Self {
            jobs: counter(
                &r,
                "dashtam_jobs_total",
                "Job events by queue, kind and event.",
                &["queue", "kind", "event"],
            ),
            job_duration_seconds: histogram(
                &r,
                "dashtam_job_duration_seconds",
                "Time a handler ran, by queue, kind and outcome.",
                &["queue", "kind", "outcome"],
                LATENCY.to_vec(),
            ),
            job_pickup_seconds: histogram(
                &r,
                "dashtam_job_pickup_seconds",
                "Time from a job falling due to a worker claiming it.",
                &["queue"],
                LATENCY.to_vec(),
            ),
            queue_claim_seconds: histogram(
                &r,
                "dashtam_queue_claim_seconds",
                "Time one claim of due jobs took (one statement per batch).",
                &["queue"],
                STATEMENT.to_vec(),
            ),
            provider_requests: counter(
                &r,
                "dashtam_provider_requests_total",
                "Provider HTTP requests by provider, endpoint and status (or error).",
                &["provider", "endpoint", "status"],
            ),
            provider_request_seconds: histogram(
                &r,
                "dashtam_provider_request_seconds",
                "Provider HTTP request latency.",
                &["provider", "endpoint"],
                LATENCY.to_vec(),
            ),
            provider_breaker_transitions: counter(
                &r,
                "dashtam_provider_breaker_transitions_total",
                "Provider breaker transitions made by this process, by provider and new \
                 state (open, half_open, closed; paused: a 429 paused the provider).",
                &["provider", "to"],
            ),
            provider_breaker_open: int_gauge(
                &r,
                "dashtam_provider_breaker_open",
                "1 while the provider's breaker is open or half-open (cluster-wide, \
                 read from the database), else 0.",
                &["provider"],
            ),
            provider_budget_decisions: counter(
                &r,
                "dashtam_provider_budget_decisions_total",
                "Provider calls weighed against the provider's budget, by provider and \
                 decision: allowed, waited (a short wait in place), deferred (the job \
                 was snoozed), fail_open (Redis unreachable: this process's share of \
                 the budget decided).",
                &["provider", "decision"],
            ),
            webhooks: counter(
                &r,
                "dashtam_webhooks_total",
                "Provider webhooks received, by provider, kind (sync_updates_available, \
                 login_required, reauth_soon, permission_revoked, login_repaired, other, \
                 none when refused before it was read) and result (applied, coalesced, \
                 ignored, unknown_item, unsigned, forged, stale, replayed, malformed, \
                 key_unavailable).",
                &["provider", "kind", "result"],
            ),
            transactions_ingested: counter(
                &r,
                "dashtam_transactions_ingested_total",
                "Transactions received from providers and committed, by provider.",
                &["provider"],
            ),
            token_refreshes: counter(
                &r,
                "dashtam_token_refreshes_total",
                "Token refresh decisions by provider and outcome (refreshed, \
                 skipped: someone else already had, failed: will retry, \
                 deferred: the provider is down or paused, no attempt spent, \
                 reauth_required: the refresh token is dead).",
                &["provider", "outcome"],
            ),
            scheduler_leader: {
                let g = IntGauge::new(
                    "dashtam_scheduler_leader",
                    "1 while this process leads the scheduler, else 0.",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            queue_jobs: int_gauge(
                &r,
                "dashtam_queue_jobs",
                "Unfinished jobs by queue and state (scheduled, available, running, retryable), read from the database.",
                &["queue", "state"],
            ),
            queue_oldest_available_age: {
                let g = GaugeVec::new(
                    Opts::new(
                        "dashtam_queue_oldest_available_age_seconds",
                        "How long the oldest runnable job of each queue has waited.",
                    ),
                    &["queue"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            connections: int_gauge(
                &r,
                "dashtam_connections",
                "Provider connections by provider and status, read from the database.",
                &["provider", "status"],
            ),
            db_pool_connections: int_gauge(
                &r,
                "dashtam_db_pool_connections",
                "This process's database connections by pool (main, queue) and state (in_use, idle).",
                &["pool", "state"],
            ),
            rate_limit_decisions: counter(
                &r,
                "dashtam_rate_limit_decisions_total",
                "Rate-limit decisions on API writes by class (enqueue, write) and decision (allowed, limited, fail_open: Redis unavailable, let through).",
                &["class", "decision"],
            ),
            scheduler_ticks: counter(
                &r,
                "dashtam_scheduler_ticks_total",
                "Scheduler ticks processed by this process, by cycle.",
                &["cycle"],
            ),
            http_requests: counter(
                &r,
                "dashtam_http_requests_total",
                "API requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            http_request_seconds: histogram(
                &r,
                "dashtam_http_request_seconds",
                "API request latency by route template and method.",
                &["route", "method"],
                LATENCY.to_vec(),
            ),
            build_info,
            up,
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Label values known in advance. Every series they make is exported from
/// the first scrape, at zero ([`Metrics::prime`]): a fresh deployment's
/// dashboards show zeros rather than "No data", and `rate()` and
/// `increase()` see the first event as a change from zero.
#[derive(Clone, Debug)]
pub struct KnownLabels {
    /// Each queue, with the kinds of job it runs.
    pub queues: Vec<(String, Vec<String>)>,
    pub providers: Vec<String>,
    /// Every status a connection can have.
    pub connection_statuses: Vec<String>,
    /// The providers that send webhooks.
    pub webhook_providers: Vec<String>,
    /// The scheduler's cycles.
    pub cycles: Vec<String>,
    /// (provider, endpoint) of every provider call the adapters make.
    pub provider_endpoints: Vec<(String, String)>,
}

/// `dashtam_jobs_total`'s events; the outcomes of a run are the last five
/// but `released` and the others' subset in [`JOB_OUTCOMES`].
pub const JOB_EVENTS: [&str; 10] = [
    "enqueued",
    "started",
    "succeeded",
    "snoozed",
    "retried",
    "failed",
    "cancelled",
    "rescued",
    "handed_back",
    "released",
];
/// How a handler's run ended (`dashtam_job_duration_seconds`'s outcome).
pub const JOB_OUTCOMES: [&str; 5] = ["succeeded", "snoozed", "retried", "failed", "cancelled"];
/// The unfinished states `dashtam_queue_jobs` counts.
pub const PENDING_STATES: [&str; 4] = ["scheduled", "available", "running", "retryable"];
pub const BREAKER_TRANSITIONS: [&str; 4] = ["open", "half_open", "closed", "paused"];
pub const BUDGET_DECISIONS: [&str; 4] = ["allowed", "waited", "deferred", "fail_open"];
pub const TOKEN_REFRESH_OUTCOMES: [&str; 5] = [
    "refreshed",
    "skipped",
    "failed",
    "deferred",
    "reauth_required",
];
pub const WEBHOOK_KINDS: [&str; 7] = [
    "sync_updates_available",
    "login_required",
    "reauth_soon",
    "permission_revoked",
    "login_repaired",
    "other",
    "none",
];
pub const WEBHOOK_RESULTS: [&str; 10] = [
    "applied",
    "coalesced",
    "ignored",
    "unknown_item",
    "unsigned",
    "forged",
    "stale",
    "replayed",
    "malformed",
    "key_unavailable",
];
pub const RATE_LIMIT_CLASSES: [&str; 2] = ["enqueue", "write"];
/// This process's database pools, and their connections' states.
pub const DB_POOLS: [&str; 2] = ["main", "queue"];
pub const DB_POOL_STATES: [&str; 2] = ["in_use", "idle"];
pub const RATE_LIMIT_DECISIONS: [&str; 3] = ["allowed", "limited", "fail_open"];

impl Metrics {
    /// Creates every series `known` makes, at zero (counters and
    /// histograms; the database gauges through [`Metrics::zero_gauges`]).
    pub fn prime(&self, known: &KnownLabels) {
        for (queue, kinds) in &known.queues {
            self.job_pickup_seconds.with_label_values(&[queue]);
            self.queue_claim_seconds.with_label_values(&[queue]);
            for kind in kinds {
                for event in JOB_EVENTS {
                    self.jobs.with_label_values(&[queue, kind, event]).inc_by(0);
                }
                for outcome in JOB_OUTCOMES {
                    self.job_duration_seconds
                        .with_label_values(&[queue, kind, outcome]);
                }
            }
        }
        for p in &known.providers {
            self.transactions_ingested.with_label_values(&[p]).inc_by(0);
            for to in BREAKER_TRANSITIONS {
                self.provider_breaker_transitions
                    .with_label_values(&[p, to])
                    .inc_by(0);
            }
            for decision in BUDGET_DECISIONS {
                self.provider_budget_decisions
                    .with_label_values(&[p, decision])
                    .inc_by(0);
            }
            for outcome in TOKEN_REFRESH_OUTCOMES {
                self.token_refreshes
                    .with_label_values(&[p, outcome])
                    .inc_by(0);
            }
        }
        for (p, endpoint) in &known.provider_endpoints {
            self.provider_requests
                .with_label_values(&[p, endpoint, "200"])
                .inc_by(0);
            self.provider_request_seconds
                .with_label_values(&[p, endpoint]);
        }
        for p in &known.webhook_providers {
            for kind in WEBHOOK_KINDS {
                for result in WEBHOOK_RESULTS {
                    self.webhooks
                        .with_label_values(&[p, kind, result])
                        .inc_by(0);
                }
            }
        }
        for class in RATE_LIMIT_CLASSES {
            for decision in RATE_LIMIT_DECISIONS {
                self.rate_limit_decisions
                    .with_label_values(&[class, decision])
                    .inc_by(0);
            }
        }
        for cycle in &known.cycles {
            self.scheduler_ticks.with_label_values(&[cycle]).inc_by(0);
        }
        for p in &known.providers {
            self.provider_breaker_open.with_label_values(&[p]).set(0);
        }
        // Until the first refresh reads the pools.
        for pool in DB_POOLS {
            for state in DB_POOL_STATES {
                self.db_pool_connections
                    .with_label_values(&[pool, state])
                    .set(0);
            }
        }
        self.zero_queue_gauges(known);
        self.zero_connection_gauges(known);
    }

    /// Creates the API's request series of `route` (a template) and
    /// `method` at zero, under the status the route answers when it
    /// succeeds.
    pub fn prime_route(&self, route: &str, method: &str, status: &str) {
        self.http_requests
            .with_label_values(&[route, method, status])
            .inc_by(0);
        self.http_request_seconds
            .with_label_values(&[route, method]);
    }

    /// Sets the queue gauges of every known queue and state to zero: at the
    /// start, and after a refresh reset them (a state that emptied must read
    /// 0, not vanish). The refresh then sets what the database counts.
    pub fn zero_queue_gauges(&self, known: &KnownLabels) {
        for (queue, _) in &known.queues {
            self.queue_oldest_available_age
                .with_label_values(&[queue])
                .set(0.0);
            for state in PENDING_STATES {
                self.queue_jobs.with_label_values(&[queue, state]).set(0);
            }
        }
    }

    /// [`Metrics::zero_queue_gauges`] for the connection counts.
    pub fn zero_connection_gauges(&self, known: &KnownLabels) {
        for p in &known.providers {
            for status in &known.connection_statuses {
                self.connections.with_label_values(&[p, status]).set(0);
            }
        }
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// A histogram series' cumulative buckets, `(upper bound, count)`, the last
/// one `(+Inf, total)`: for in-process readers (benchmarks) that compute
/// quantiles between two readings.
pub fn cumulative_buckets(h: &HistogramVec, labels: &[&str]) -> Vec<(f64, u64)> {
    use prometheus::core::Metric as _;
    let m = h.with_label_values(labels).metric();
    let hist = m.get_histogram();
    let mut out: Vec<(f64, u64)> = hist
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    out.push((f64::INFINITY, hist.get_sample_count()));
    out
}
