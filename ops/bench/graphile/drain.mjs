// graphile-worker 0.17 drained the way `dashtam bench drain` drains: a fresh
// database, N no-op jobs added in one statement (graphile_worker.add_jobs),
// then workers with C concurrent jobs and a local queue of B jobs (its
// batching: fetch B at a time, complete and fail in batches), on a pool
// opened in full beforehand, timed until the last job is gone. Prints one
// JSON line like ours.
//
//   node drain.mjs --jobs 200000 --concurrency 24 --batch 100 [--sync-commit on|off]
//
// --sync-commit sets synchronous_commit for the benchmark database (ALTER
// DATABASE), so graphile-worker commits exactly as durably as we do.
import pg from "pg";
import { Logger, run, runMigrations } from "graphile-worker";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? dflt : process.argv[i + 1];
};
const server = arg("server", process.env.SERVER_URL || "postgres://postgres@127.0.0.1:5432");
const db = arg("db", "dashtam_bench_graphile");
const jobs = Number(arg("jobs", "20000"));
const concurrency = Number(arg("concurrency", "24"));
const batch = Number(arg("batch", "100"));
const syncCommit = arg("sync-commit", "off");

const admin = new pg.Client({ connectionString: `${server}/postgres` });
await admin.connect();
await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
await admin.query(`CREATE DATABASE ${db}`);
await admin.query(`ALTER DATABASE ${db} SET synchronous_commit = ${syncCommit === "on" ? "on" : "off"}`);
await admin.end();

const connectionString = `${server}/${db}`;
// Warnings and errors only: a log line per job would cost graphile-worker
// the time we are measuring (ours logs nothing per job either).
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`${level}: ${message}`);
});
const preset = {
  worker: {
    connectionString,
    concurrentJobs: concurrency,
    maxPoolSize: concurrency + 2,
    pollInterval: 2000,
    localQueue: { size: batch },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};
await runMigrations({ preset, logger });

const client = new pg.Client({ connectionString });
await client.connect();
let t = process.hrtime.bigint();
await client.query(
  `SELECT graphile_worker.add_jobs(array(
     SELECT json_populate_record(null::graphile_worker.job_spec,
                                 json_build_object('identifier', 'noop', 'payload', '{}'::json))
     FROM generate_series(1, $1)))`,
  [jobs],
);
const enqueueS = Number(process.hrtime.bigint() - t) / 1e9;
await client.query("ANALYZE graphile_worker._private_jobs");

// Its pool opened in full before the clock starts, as ours is (`dashtam
// bench drain` warms its worker pool first).
const poolSize = concurrency + 2;
const pgPool = new pg.Pool({ connectionString, max: poolSize });
pgPool.on("error", (e) => console.error(`pool error: ${e.message}`));
const clients = await Promise.all(Array.from({ length: poolSize }, () => pgPool.connect()));
clients.forEach((c) => c.release());
const { connectionString: _, maxPoolSize: __, ...workerOptions } = preset.worker;

let done = 0;
t = process.hrtime.bigint();
const runner = await run({
  preset: { worker: workerOptions },
  pgPool,
  taskList: { noop: async () => { done += 1; } },
  noHandleSignals: true,
  logger,
});
for (;;) {
  if (done >= jobs) {
    const { rows } = await client.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs");
    if (rows[0].n === 0) break;
  }
  await new Promise((r) => setTimeout(r, 5));
}
const drainS = Number(process.hrtime.bigint() - t) / 1e9;
await runner.stop();
await pgPool.end();
await client.end();
console.log(JSON.stringify({
  bench: "drain",
  system: "graphile-worker 0.17.3",
  jobs,
  concurrency,
  local_queue: batch,
  synchronous_commit: syncCommit === "on",
  enqueue_s: Math.round(enqueueS * 1000) / 1000,
  drain_s: Math.round(drainS * 1000) / 1000,
  jobs_per_s: Math.round(jobs / drainS),
}));
