//! `apalis-drain`: apalis-postgres 1.0 on `dashtam bench drain`'s workload
//! (docs/benchmarks.md): enqueue `--jobs` no-op jobs, then time one worker
//! with `--concurrency` slots draining them; one JSON line with the same
//! fields. Run against a scratch database, which it drops and re-creates.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::*;
use apalis_postgres::{Config, PostgresStorage};
use clap::Parser;
use futures::StreamExt;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
struct Args {
    /// Scratch database (dropped and re-created).
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/dashtam_bench_apalis"
    )]
    database_url: String,
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    #[arg(long, default_value_t = 24)]
    concurrency: usize,
    /// Tasks fetched per poll (apalis-postgres `Config::batch_size`).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Wake on LISTEN/NOTIFY as well as polling.
    #[arg(long)]
    pubsub: bool,
    /// `synchronous_commit` of every connection: `off` is what `dashtam
    /// bench drain` runs its queue bookkeeping with by default, `on` what
    /// it runs with `DASHTAM__WORKER__SYNCHRONOUS_COMMIT=true`. Compare at
    /// equal settings.
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    synchronous_commit: String,
}

static HANDLED: AtomicUsize = AtomicUsize::new(0);

async fn handle(_n: usize) -> Result<(), BoxDynError> {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    dashtam_store::migrate::recreate_database(&args.database_url).await?;
    let options: sqlx::postgres::PgConnectOptions = args.database_url.parse()?;
    let options = options.options([("synchronous_commit", args.synchronous_commit.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(32)
        // Every connection open before the clock starts, as ours are.
        .min_connections(32)
        .connect_with(options)
        .await?;
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(pool.acquire().await?);
    }
    drop(held);
    PostgresStorage::<()>::setup(&pool).await?;
    let config = Config::default().queue("bench").batch_size(args.batch);
    let mut storage = PostgresStorage::<usize>::new(&pool).with_config(config);

    let started = Instant::now();
    let mut tasks = futures::stream::iter(0..args.jobs).map(|n| TaskBuilder::new(n).build());
    storage.push_all(&mut tasks).await?;
    let enqueue_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let worker = if args.pubsub {
        tokio::spawn(
            WorkerBuilder::new("bench")
                .backend(storage.with_pubsub())
                .concurrency(args.concurrency)
                .build(handle)
                .run(),
        )
    } else {
        tokio::spawn(
            WorkerBuilder::new("bench")
                .backend(storage)
                .concurrency(args.concurrency)
                .build(handle)
                .run(),
        )
    };
    // Drained when every job is recorded done in the database.
    let done = loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
                .fetch_one(&pool)
                .await?;
        if usize::try_from(done)? >= args.jobs || worker.is_finished() {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let drain_s = started.elapsed().as_secs_f64();
    worker.abort();
    println!(
        "{}",
        serde_json::json!({
            "bench": "drain",
            "engine": "apalis-postgres 1.0",
            "jobs": args.jobs,
            "done": done,
            "handled": HANDLED.load(Ordering::Relaxed),
            "concurrency": args.concurrency,
            "fetch_batch": args.batch,
            "pubsub": args.pubsub,
            "synchronous_commit": args.synchronous_commit == "on",
            "enqueue_s": (enqueue_s * 1000.0).round() / 1000.0,
            "drain_s": (drain_s * 1000.0).round() / 1000.0,
            "jobs_per_s": (args.jobs as f64 / drain_s).round(),
        })
    );
    Ok(())
}
