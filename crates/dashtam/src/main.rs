//! `dashtam`: one binary, several roles. See `dashtam --help`. The demo and
//! the benchmarks are modules of the binary, not of the library the daemon
//! runs on.

mod bench;
mod console;
mod demo;
mod localpg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dashtam::app::{self, Daemon, Role};
use dashtam::config::Config;
use dashtam::secrets::Secrets;
use dashtam_sandbox::{Sandbox, SandboxConfig};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Parser)]
#[command(
    name = "dashtam",
    version,
    about = "Dashtam Worker: keeps financial data fresh through durable Postgres-backed job queues."
)]
struct Cli {
    /// Configuration file layered over the built-in defaults (see config/default.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct DbArgs {
    /// PostgreSQL URL [default: database.url from the configuration]
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: API, workers and scheduler (all by default).
    Serve {
        /// Address for the HTTP API [default: http.listen, 127.0.0.1:8080]
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        db: DbArgs,
        /// Run only these roles (repeatable): api, worker, scheduler.
        #[arg(long = "role", value_enum, value_name = "ROLE")]
        roles: Vec<Role>,
        /// Apply pending migrations at start instead of refusing to start.
        #[arg(long)]
        migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Run the sandbox provider (Plaid wire format) alone.
    Sandbox {
        /// Address to listen on [default: sandbox.listen, 127.0.0.1:8081]
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Accepted for symmetry with the other commands; the sandbox keeps its data in memory.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Sync several sandbox connections end to end through the real API, then print a summary.
    Demo {
        #[command(flatten)]
        db: DbArgs,
        /// Address for the demo's API (port 0: any free port).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Plaid-style (cursor) sandbox connections to link.
        #[arg(long, default_value_t = 4)]
        connections: u32,
        /// Schwab-style (OAuth + date window) sandbox connections to link.
        #[arg(long, default_value_t = 2)]
        oauth_connections: u32,
        /// Accounts per connection.
        #[arg(long, default_value_t = 3)]
        accounts: u32,
        /// Transactions per account.
        #[arg(long, default_value_t = 250)]
        transactions_per_account: u32,
        /// Leave the daemon running afterwards (Ctrl-C stops it), to look around.
        #[arg(long)]
        keep: bool,
    },
    /// Development access tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Check the configuration (defaults, --config, DASHTAM__ variables)
    /// and print what deployment tooling needs to agree with: the listen
    /// address and the secrets source. Exits 1 naming any bad key.
    Config,
    /// Credential encryption keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Jobs: list, show, retry, cancel, discard (against the database).
    Jobs {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: console::JobsCommand,
    },
    /// Queues: jobs per state and whether paused; pause or resume one.
    Queues {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<console::QueuesCommand>,
    },
    /// Connections of every user, e.g. those needing re-authorization.
    Connections {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: console::ConnectionsCommand,
    },
    /// Providers: breaker, pause and budget.
    Providers {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks; each prints one JSON line.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print an access token signed with auth.jwt_secret.
    Issue {
        /// The user (JWT `sub`).
        #[arg(long)]
        sub: String,
        /// client or operator.
        #[arg(long, default_value = "client")]
        role: String,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random AES-256 key (base64) for crypto.keys.
    Generate,
    /// Re-encrypt every stored credential under the active key. Run it
    /// after every daemon has the new key as active (old keys still listed);
    /// then the old key can be removed.
    Rotate {
        #[command(flatten)]
        db: DbArgs,
        /// Credentials re-encrypted per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
}

/// The database a benchmark drops and re-creates: never taken from
/// DATABASE_URL, so a benchmark cannot wipe the database the daemon uses.
#[derive(Args)]
struct BenchDb {
    /// Database to drop and re-create for the run.
    #[arg(
        long = "database-url",
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/dashtam_bench"
    )]
    url: String,
}

#[derive(Args)]
struct QueueBenchArgs {
    #[command(flatten)]
    db: BenchDb,
    /// Jobs per concurrent slot the worker runs.
    #[arg(long, default_value_t = 24)]
    concurrency: usize,
    /// Most jobs claimed per round trip.
    #[arg(long, default_value_t = 100)]
    fetch_batch: usize,
    /// Jobs scheduled a day ahead in the same queue, waiting behind the run.
    #[arg(long, default_value_t = 0)]
    queued: usize,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Queue throughput: bulk-enqueue N no-op jobs, time workers until none is pending.
    Drain {
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        /// The jobs belong to this many owners in turn (0: no owner).
        #[arg(long, default_value_t = 0)]
        owners: usize,
        #[command(flatten)]
        args: QueueBenchArgs,
    },
    /// Pickup latency: an idle worker, jobs enqueued one at a time 10 ms apart.
    Latency {
        #[arg(long, default_value_t = 500)]
        jobs: usize,
        #[command(flatten)]
        args: QueueBenchArgs,
    },
    /// Tenant fairness: small owners' jobs arrive while one owner's backlog drains.
    Fairness {
        /// The large owner's due jobs.
        #[arg(long, default_value_t = 50_000)]
        backlog: usize,
        /// Small owners, arriving once the backlog drains.
        #[arg(long, default_value_t = 10)]
        small_owners: usize,
        #[arg(long, default_value_t = 10)]
        jobs_per_owner: usize,
        /// Milliseconds each job works.
        #[arg(long, default_value_t = 20)]
        job_ms: u64,
        #[command(flatten)]
        args: QueueBenchArgs,
    },
    /// HTTP API throughput with wrk: enqueue (a different connection each request), then job status.
    Api {
        #[command(flatten)]
        db: BenchDb,
        #[arg(long, default_value_t = 100_000)]
        connections: usize,
        /// Seconds per endpoint.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// wrk's open connections.
        #[arg(long, default_value_t = 64)]
        wrk_connections: usize,
    },
    /// Scheduler sweeps: N connections all due; one token-refresh tick and one stale-sync tick.
    Schedule {
        #[command(flatten)]
        db: BenchDb,
        #[arg(long, default_value_t = 100_000)]
        connections: usize,
    },
    /// Hours-like churn: sync jobs at a fixed rate against a slow sandbox
    /// for M minutes, on a private PostgreSQL with default settings unless
    /// --database-url is given; a JSON line per minute and a summary.
    Soak {
        /// A server to use instead of a private one (its settings apply:
        /// without autovacuum the table can only grow).
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 10)]
        minutes: u32,
        /// Sync jobs enqueued per second.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 2_000)]
        connections: u32,
        /// Added to every provider data call (a slow provider).
        #[arg(long, default_value_t = 50)]
        provider_latency_ms: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Hold a transaction (and the xmin horizon) open on another
        /// connection for the whole run.
        #[arg(long)]
        pin_xmin: bool,
    },
    /// The fleet's steady state: N connections synced once, 0–5 new transactions each, one more sync of every one.
    Incremental {
        #[command(flatten)]
        db: BenchDb,
        #[arg(long, default_value_t = 100_000)]
        connections: usize,
        /// Sync jobs running at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Each connection gets 0 to this many new transactions.
        #[arg(long, default_value_t = 5)]
        max_new: u32,
    },
    /// Ingest throughput: M connections × K transactions, then an idempotent re-sync.
    Sync {
        #[command(flatten)]
        db: BenchDb,
        #[arg(long, default_value_t = 20)]
        connections: u32,
        /// Transactions per connection.
        #[arg(long, default_value_t = 50_000)]
        transactions: u32,
        /// Accounts per connection (transactions are split among them).
        #[arg(long, default_value_t = 2)]
        accounts: u32,
        /// Sync jobs running at once.
        #[arg(long, default_value_t = 10)]
        concurrency: usize,
    },
}

fn queue_bench(jobs: usize, a: QueueBenchArgs) -> bench::QueueBenchOptions {
    bench::QueueBenchOptions {
        database_url: a.db.url,
        jobs,
        concurrency: a.concurrency,
        fetch_batch: a.fetch_batch,
        queued: a.queued,
        owners: 0,
    }
}

fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("--ttl {s:?}: expected e.g. 30m, 1h, 7d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("--ttl {s:?}: unit must be s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    let quiet = matches!(
        cli.command,
        Command::Demo { .. }
            | Command::Bench { .. }
            | Command::Token { .. }
            | Command::Keys { .. }
            | Command::Config
            | Command::Jobs { .. }
            | Command::Queues { .. }
            | Command::Connections { .. }
            | Command::Providers { .. }
    );
    let filter = if quiet {
        "warn"
    } else {
        config.log.filter.as_str()
    };
    let traces = dashtam_telemetry::init(config.log.format, filter, Some(&config.tracing))?;
    let code = match cli.command {
        Command::Serve {
            listen,
            db,
            roles,
            migrate,
        } => serve(config, listen, db, roles, migrate).await,
        Command::Migrate { db } => migrate(&config, db).await,
        Command::Sandbox { listen, db: _ } => sandbox(&config, listen).await,
        Command::Demo {
            db,
            listen,
            connections,
            oauth_connections,
            accounts,
            transactions_per_account,
            keep,
        } => {
            let opts = demo::DemoOptions {
                database_url: db_url(&config, db),
                listen,
                connections,
                oauth_connections,
                accounts,
                transactions_per_account,
                keep,
            };
            let ok = demo::run(config, opts).await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Token {
            command: TokenCommand::Issue { sub, role, ttl },
        } => issue_token(&config, &sub, &role, &ttl),
        Command::Config => {
            let line = serde_json::json!({
                "valid": true,
                "http_listen": config.http.listen.to_string(),
                "secrets_source": format!("{:?}", config.secrets.source).to_lowercase(),
            });
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command: KeysCommand::Generate,
        } => {
            println!("{}", dashtam_store::Cipher::generate_key()?.expose_secret());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            command: KeysCommand::Rotate { db, batch },
        } => rotate_keys(&config, db, batch).await,
        Command::Jobs { db, command } => {
            let url = db_url(&config, db);
            console::jobs(&config, &url, command).await
        }
        Command::Queues { db, json, command } => {
            let url = db_url(&config, db);
            console::queues(&config, &url, command, json).await
        }
        Command::Connections { db, command } => {
            let url = db_url(&config, db);
            console::connections(&config, &url, command).await
        }
        Command::Providers { db, json } => {
            let url = db_url(&config, db);
            console::providers(&config, &url, json).await
        }
        Command::Bench { command } => run_bench(config, command).await.map(|()| ExitCode::SUCCESS),
    };
    // The spans still buffered go out before the process ends (the
    // exporter blocks its own thread, not the runtime's).
    let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    code
}

/// The database URL: the flag, else the configuration's.
fn db_url(config: &Config, db: DbArgs) -> String {
    db.database_url
        .unwrap_or_else(|| config.database.url.clone())
}

/// `dashtam serve`: the daemon, with its roles, until a signal.
async fn serve(
    mut config: Config,
    listen: Option<SocketAddr>,
    db: DbArgs,
    roles: Vec<Role>,
    migrate: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(l) = listen {
        config.http.listen = l;
    }
    let url = db_url(&config, db);
    let roles = if roles.is_empty() {
        vec![Role::Api, Role::Worker, Role::Scheduler]
    } else {
        roles
    };
    let secrets = Secrets::load(&config, roles.contains(&Role::Api)).await?;
    let pool = app::connect(&config, &url).await?;
    app::ensure_schema(&pool, migrate).await?;
    let shutdown = CancellationToken::new();
    secrets.spawn_refresher(shutdown.clone());
    let daemon = Daemon::new(config, pool, &secrets)?;
    app::cancel_on_signals(shutdown.clone());
    info!(roles = ?roles, "dashtam starting");
    daemon.start(&roles, None, shutdown).await?.wait().await?;
    info!("dashtam stopped");
    Ok(ExitCode::SUCCESS)
}

/// `dashtam migrate`.
async fn migrate(config: &Config, db: DbArgs) -> anyhow::Result<ExitCode> {
    let url = db_url(config, db);
    let pool = app::connect(config, &url).await?;
    app::migrate(&pool).await.context("migration failed")?;
    println!("database {} is up to date", app::redact(&url));
    Ok(ExitCode::SUCCESS)
}

/// `dashtam sandbox`: the sandbox provider alone, its data evolving every
/// `sandbox.evolve_every_secs`.
async fn sandbox(config: &Config, listen: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    let s = &config.sandbox;
    let sandbox = Sandbox::new(SandboxConfig {
        client_id: s.client_id.clone(),
        secret: s.secret.clone(),
        seed: s.seed,
        accounts_per_item: s.accounts_per_item,
        transactions_per_account: s.transactions_per_account,
        oauth: s.oauth.clone(),
    });
    let addr = listen.unwrap_or(s.listen);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    info!(addr = %listener.local_addr()?, "sandbox provider listening");
    let shutdown = CancellationToken::new();
    app::cancel_on_signals(shutdown.clone());
    // Time passes at the provider: pendings post, rows change and go, new
    // ones arrive (and items with a webhook are told).
    if s.evolve_every_secs.count() > 0 {
        let (sandbox, stop) = (sandbox.clone(), shutdown.clone());
        let every = s.evolve_every_secs.get();
        tokio::spawn(async move { sandbox.evolve(every, stop.cancelled()).await });
    }
    sandbox
        .serve(listener, async move { shutdown.cancelled().await })
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// `dashtam token issue`: a development access token.
fn issue_token(config: &Config, sub: &str, role: &str, ttl: &str) -> anyhow::Result<ExitCode> {
    let role = match role {
        "client" => dashtam_api::Role::Client,
        "operator" => dashtam_api::Role::Operator,
        other => anyhow::bail!("--role {other:?}: expected client or operator"),
    };
    dashtam_domain::UserId::parse(sub).map_err(|e| anyhow::anyhow!("--sub: {e}"))?;
    let token = dashtam_api::issue_token(
        &config.jwt_secret()?,
        &config.auth.issuer,
        &config.auth.audience,
        sub,
        role,
        parse_ttl(ttl)?,
    )?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// `dashtam keys rotate`: every credential re-encrypted under the active
/// key, in batches.
async fn rotate_keys(config: &Config, db: DbArgs, batch: i64) -> anyhow::Result<ExitCode> {
    let secrets = Secrets::load(config, false).await?;
    let url = db_url(config, db);
    let pool = app::connect(config, &url).await?;
    app::ensure_schema(&pool, false).await?;
    let store = dashtam_store::Store::new(pool, secrets.cipher.clone());
    let mut total = 0;
    loop {
        let n = store.rotate_credentials(batch.max(1)).await?;
        if n == 0 {
            break;
        }
        total += n;
    }
    println!(
        "re-encrypted {total} connection credential(s) under key {:?}",
        secrets.cipher.active_key()
    );
    Ok(ExitCode::SUCCESS)
}

/// `dashtam bench …`: one JSON line per run.
async fn run_bench(config: Config, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Drain { jobs, owners, args } => {
            let opts = bench::QueueBenchOptions {
                owners,
                ..queue_bench(jobs, args)
            };
            bench::drain(config, opts).await
        }
        BenchCommand::Fairness {
            backlog,
            small_owners,
            jobs_per_owner,
            job_ms,
            args,
        } => {
            let opts = bench::FairnessBenchOptions {
                queue: queue_bench(0, args),
                backlog,
                owners: small_owners,
                jobs_per_owner,
                job_ms,
            };
            bench::fairness(config, opts).await
        }
        BenchCommand::Latency { jobs, args } => {
            bench::latency(config, queue_bench(jobs, args)).await
        }
        BenchCommand::Incremental {
            db,
            connections,
            concurrency,
            max_new,
        } => {
            let opts = bench::incremental::IncrementalOptions {
                database_url: db.url,
                connections,
                concurrency,
                max_new,
            };
            bench::incremental::incremental(config, opts).await
        }
        BenchCommand::Soak {
            database_url,
            minutes,
            rate,
            connections,
            provider_latency_ms,
            concurrency,
            pin_xmin,
        } => {
            let opts = bench::soak::SoakOptions {
                database_url,
                minutes,
                rate,
                connections,
                provider_latency_ms,
                concurrency,
                pin_xmin,
            };
            bench::soak::soak(config, opts).await
        }
        BenchCommand::Api {
            db,
            connections,
            duration,
            wrk_connections,
        } => {
            let opts = bench::ApiBenchOptions {
                database_url: db.url,
                connections,
                duration_secs: duration,
                wrk_connections,
            };
            bench::api(config, opts).await
        }
        BenchCommand::Schedule { db, connections } => {
            bench::schedule(config, &db.url, connections).await
        }
        BenchCommand::Sync {
            db,
            connections,
            transactions,
            accounts,
            concurrency,
        } => {
            let opts = bench::SyncBenchOptions {
                database_url: db.url,
                connections,
                transactions,
                accounts,
                concurrency,
            };
            bench::sync(config, opts).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90").unwrap().as_secs(), 90);
        assert_eq!(parse_ttl("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_ttl("1h").unwrap().as_secs(), 3600);
        assert_eq!(parse_ttl("7d").unwrap().as_secs(), 604_800);
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
