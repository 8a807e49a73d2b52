-- Fair claims (crates/queue/queries/fetch.sql): the owners with pending jobs
-- at a priority, walked in rotation, and each owner's due jobs in run_at
-- order.
CREATE INDEX jobs_fair ON jobs (queue, priority, owner, run_at, id)
    WHERE state IN ('scheduled', 'available', 'retryable');

-- The per-owner cap: how many of an owner's jobs run (counted up to the cap).
CREATE INDEX jobs_owner_running ON jobs (queue, owner)
    WHERE state = 'running' AND owner IS NOT NULL;
