//! `dashtam jobs | queues | connections | providers`: the operator's console
//! in the terminal, straight against the database (as `dashtam migrate`
//! is). Human tables by default, `--json` (one JSON document) for scripts.
//! Retry, cancel, discard, pause and resume are the admin API's own units
//! of work (`dashtam_api::actions`): the same audit records, by
//! `cli:<user>`.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use dashtam::app;
use dashtam::config::Config;
use std::str::FromStr;

use dashtam_api::actions::{self, QueueName};
use dashtam_db::Db;
use dashtam_domain::audit::AuditAction;
use dashtam_domain::model::{ConnectionStatus, ProviderKind};
use dashtam_queue::{JobFilter, JobRecord, JobState, Queue, ops};
use dashtam_store::Store;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first.
    List {
        /// Only jobs in this state (scheduled, available, running,
        /// retryable, succeeded, failed, cancelled).
        #[arg(long, value_parser = parse_state)]
        state: Option<JobState>,
        /// Only jobs of this kind (sync, token_refresh).
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs of this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only jobs of this owner (a user).
        #[arg(long)]
        owner: Option<String>,
        /// Only jobs about this connection.
        #[arg(long, value_name = "CONNECTION_ID")]
        connection: Option<Uuid>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One job: its arguments, attempts and errors, progress, and why it waits.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Run a failed or cancelled job again.
    Retry { id: Uuid },
    /// Cancel a pending job, or ask a running one to stop.
    Cancel { id: Uuid },
    /// Delete a finished job.
    Discard { id: Uuid },
}

#[derive(Subcommand)]
pub enum QueuesCommand {
    /// Stop workers claiming from the queue (running jobs carry on).
    Pause {
        #[arg(value_parser = QueueName::from_str)]
        queue: QueueName,
    },
    /// Let workers claim from the queue again.
    Resume {
        #[arg(value_parser = QueueName::from_str)]
        queue: QueueName,
    },
}

#[derive(Subcommand)]
pub enum ConnectionsCommand {
    /// Every user's connections, newest first.
    List {
        /// Only this status (e.g. reauth_required).
        #[arg(long, value_parser = parse_status)]
        status: Option<ConnectionStatus>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(s).ok_or_else(|| {
        let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("{s:?} is not a job state ({})", all.join(", "))
    })
}

fn parse_status(s: &str) -> Result<ConnectionStatus, String> {
    ConnectionStatus::parse(s).ok_or_else(|| {
        let all: Vec<&str> = ConnectionStatus::ALL.iter().map(|s| s.as_str()).collect();
        format!("{s:?} is not a connection status ({})", all.join(", "))
    })
}

/// Who acts, in the audit trail: `cli:` and the operating-system user.
fn actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// `rows` under `headers`, columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

fn print(json: bool, value: Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

async fn pool(config: &Config, url: &str) -> anyhow::Result<Db> {
    let pool = app::connect(config, url).await?;
    app::ensure_schema(&pool, false).await?;
    Ok(pool)
}

pub async fn jobs(config: &Config, url: &str, command: JobsCommand) -> anyhow::Result<ExitCode> {
    let pool = pool(config, url).await?;
    let queue = Queue::new(pool.clone());
    match command {
        JobsCommand::List {
            state,
            kind,
            queue: in_queue,
            owner,
            connection,
            limit,
            json,
        } => {
            let subject = connection.map(|c| c.to_string());
            let jobs = queue
                .list(
                    &JobFilter {
                        owner: owner.as_deref(),
                        state,
                        kind: kind.as_deref(),
                        subject: subject.as_deref(),
                        queue: in_queue.as_deref(),
                        after: None,
                    },
                    limit.clamp(1, 10_000),
                )
                .await?;
            print(json, json!({ "data": jobs }), || {
                let rows: Vec<Vec<String>> = jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.id.to_string(),
                            j.kind.clone(),
                            j.state.to_string(),
                            format!("{}/{}", j.attempt, j.max_attempts),
                            j.subject.clone().unwrap_or_else(|| "-".into()),
                            when(Some(j.created_at)),
                            last_error(j),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "KIND",
                        "STATE",
                        "ATTEMPT",
                        "CONNECTION",
                        "CREATED",
                        "LAST ERROR",
                    ],
                    &rows,
                )
            });
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { id, json } => {
            let Some(job) = queue.get(id).await? else {
                bail!("job {id} not found");
            };
            print(json, serde_json::to_value(&job)?, || show(&job));
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Retry { id } => {
            let entry = actions::entry(
                AuditAction::JobRetried,
                actor(),
                "job",
                id.to_string(),
                None,
            );
            match actions::retry_job(&pool, id, &entry).await? {
                ops::Retry::Retried(job) => println!("job {id} is {} again", job.state),
                ops::Retry::NotRetryable => {
                    bail!("job {id} does not exist or is not failed or cancelled")
                }
                ops::Retry::KeyHeldBy(holder) => bail!(
                    "{} holds this job's unique key (pending or running); follow it instead",
                    holder.map_or_else(|| "another job".into(), |h| format!("job {h}"))
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Cancel { id } => {
            let entry = actions::entry(
                AuditAction::JobCancelled,
                actor(),
                "job",
                id.to_string(),
                None,
            );
            let Some(job) = actions::cancel_job(&pool, id, &entry).await? else {
                bail!("job {id} does not exist or has finished");
            };
            if job.cancel_requested {
                println!("job {id} is running: asked to stop at its next checkpoint");
            } else {
                println!("job {id} cancelled");
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Discard { id } => {
            let entry = actions::entry(
                AuditAction::JobDiscarded,
                actor(),
                "job",
                id.to_string(),
                None,
            );
            if !actions::discard_job(&pool, id, &entry).await? {
                bail!("job {id} does not exist or has not finished (cancel it first)");
            }
            println!("job {id} discarded");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn last_error(j: &JobRecord) -> String {
    j.errors
        .as_array()
        .and_then(|e| e.last())
        .and_then(|e| e["error"].as_str())
        .map_or_else(|| "-".into(), |e| e.chars().take(60).collect())
}

fn show(j: &JobRecord) -> String {
    let mut out = vec![
        format!("job        {}", j.id),
        format!("kind       {} (queue {})", j.kind, j.queue),
        format!("state      {}", j.state),
        format!("attempt    {} of {}", j.attempt, j.max_attempts),
        format!("owner      {}", j.owner.as_deref().unwrap_or("-")),
        format!("connection {}", j.subject.as_deref().unwrap_or("-")),
        format!("created    {}", when(Some(j.created_at))),
        format!("started    {}", when(j.started_at)),
        format!("finished   {}", when(j.finished_at)),
        format!("run at     {}", when(Some(j.run_at))),
        // Job arguments carry ids, never secrets (tokens live encrypted
        // with the connection).
        format!("arguments  {}", j.payload),
    ];
    if let Some(w) = &j.waiting {
        out.push(format!("waiting    {w}"));
    }
    if let Some(p) = &j.progress {
        out.push(format!("progress   {p}"));
    }
    if j.cancel_requested {
        out.push("cancel     requested".into());
    }
    for e in j.errors.as_array().into_iter().flatten() {
        out.push(format!(
            "error      attempt {} at {}: {}",
            e["attempt"],
            e["at"].as_str().unwrap_or("?"),
            e["error"].as_str().unwrap_or("?")
        ));
    }
    out.join("\n")
}

/// `dashtam queues`: jobs per queue and state, paused or not; or pause or
/// resume one.
pub async fn queues(
    config: &Config,
    url: &str,
    command: Option<QueuesCommand>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let pool = pool(config, url).await?;
    let (queue, paused) = match command {
        None => {
            let stats = ops::stats(&pool).await?;
            let data: Vec<Value> = stats
                .iter()
                .map(|q| json!({ "queue": q.queue, "paused": q.paused, "states": q.states }))
                .collect();
            print(json, json!({ "data": data }), || {
                let count = |q: &ops::QueueStats, s: &str| q.states.get(s).copied().unwrap_or(0);
                let rows: Vec<Vec<String>> = stats
                    .iter()
                    .map(|q| {
                        let mut row = vec![
                            q.queue.clone(),
                            if q.paused { "paused" } else { "running" }.into(),
                        ];
                        row.extend(
                            JobState::ALL
                                .iter()
                                .map(|s| count(q, s.as_str()).to_string()),
                        );
                        row
                    })
                    .collect();
                let mut headers = vec!["QUEUE", "STATUS"];
                headers.extend(JobState::ALL.iter().map(|s| s.as_str()));
                table(&headers, &rows)
            });
            return Ok(ExitCode::SUCCESS);
        }
        Some(QueuesCommand::Pause { queue }) => (queue, true),
        Some(QueuesCommand::Resume { queue }) => (queue, false),
    };
    let action = if paused {
        AuditAction::QueuePaused
    } else {
        AuditAction::QueueResumed
    };
    let by = actor();
    let entry = actions::entry(action, by.clone(), "queue", queue.as_str().to_owned(), None);
    actions::set_queue_paused(&pool, &queue, paused, &by, &entry).await?;
    println!(
        "queue {} {}",
        queue.as_str(),
        if paused { "paused" } else { "resumed" }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn connections(
    config: &Config,
    url: &str,
    command: ConnectionsCommand,
) -> anyhow::Result<ExitCode> {
    let ConnectionsCommand::List {
        status,
        limit,
        json,
    } = command;
    let pool = pool(config, url).await?;
    let store = store(config, pool)?;
    let rows = store
        .all_connections(status, limit.clamp(1, 10_000))
        .await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|c| {
            json!({
                "id": c.id, "user_id": c.user_id, "provider": c.provider, "status": c.status,
                "last_sync_at": c.last_sync_at,
                "access_token_expires_at": c.access_token_expires_at,
                "refresh_token_expires_at": c.refresh_token_expires_at,
                "reauth_warned_at": c.reauth_warned_at, "created_at": c.created_at,
            })
        })
        .collect();
    print(json, json!({ "data": data }), || {
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|c| {
                vec![
                    c.id.to_string(),
                    c.user_id.clone(),
                    c.provider.clone(),
                    c.status.clone(),
                    when(c.last_sync_at),
                    when(c.refresh_token_expires_at),
                ]
            })
            .collect();
        table(
            &[
                "ID",
                "USER",
                "PROVIDER",
                "STATUS",
                "LAST SYNC",
                "REFRESH TOKEN EXPIRES",
            ],
            &rows,
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// `dashtam providers`: each provider's breaker, pause and budget.
pub async fn providers(config: &Config, url: &str, json: bool) -> anyhow::Result<ExitCode> {
    let pool = pool(config, url).await?;
    let health = store(config, pool)?.provider_health().await?;
    let data: Vec<Value> = ProviderKind::ALL
        .iter()
        .map(|p| {
            let h = health.iter().find(|h| h.provider == p.as_str());
            let budget = config.budgets.providers.get(p);
            json!({
                "provider": p.as_str(),
                "breaker": h.map_or("closed", |h| h.breaker.as_str()),
                "probe_at": h.and_then(|h| h.probe_at),
                "trips": h.map_or(0, |h| h.trips),
                "paused_until": h.and_then(|h| h.paused_until),
                "reason": h.and_then(|h| h.reason.clone()),
                "budget": budget.map(|b| json!({
                    "requests_per_sec": b.requests_per_sec,
                    "burst": b.burst,
                    "concurrency": b.concurrency,
                })),
            })
        })
        .collect();
    print(json, json!({ "data": data }), || {
        let rows: Vec<Vec<String>> = data
            .iter()
            .map(|d| {
                let text = |v: &Value| v.as_str().map_or_else(|| "-".into(), str::to_owned);
                vec![
                    text(&d["provider"]),
                    text(&d["breaker"]),
                    text(&d["probe_at"]),
                    text(&d["paused_until"]),
                    d["budget"]["requests_per_sec"]
                        .as_f64()
                        .map_or_else(|| "none".into(), |r| format!("{r}/s")),
                    text(&d["reason"]),
                ]
            })
            .collect();
        table(
            &[
                "PROVIDER",
                "BREAKER",
                "PROBE AT",
                "PAUSED UNTIL",
                "BUDGET",
                "REASON",
            ],
            &rows,
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// A store for reading connections and provider health. The console never
/// decrypts credentials: without configured keys a throwaway one builds it.
fn store(config: &Config, pool: Db) -> anyhow::Result<Store> {
    let cipher = match config.cipher() {
        Ok(c) => c,
        Err(_) => {
            let key = dashtam_store::Cipher::generate_key()?;
            dashtam_store::Cipher::new("console", &[("console".to_owned(), key)].into())?
        }
    };
    Ok(Store::new(pool, std::sync::Arc::new(cipher)))
}
