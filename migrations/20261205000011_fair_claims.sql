-- Fair claims (crates/queue/queries/fetch_fair.sql, owners_due.sql; see
-- docs/ARCHITECTURE.md, "Fair claims").

-- The owners with pending jobs, walked in order (a skip scan), and each
-- owner's due jobs at a priority in run_at order. Jobs without an owner are
-- left out: they never pay for this index, and the plain claim's probes
-- (ordered by priority) cannot wander into it.
CREATE INDEX jobs_fair ON jobs (queue, owner, priority, run_at, id)
    WHERE state IN ('scheduled', 'available', 'retryable') AND owner IS NOT NULL;

-- The per-owner cap: how many of an owner's jobs run (counted up to the cap).
CREATE INDEX jobs_owner_running ON jobs (queue, owner)
    WHERE state = 'running' AND owner IS NOT NULL;
