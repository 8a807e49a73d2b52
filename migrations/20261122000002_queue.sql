-- The job queue. One table for every queue; a worker claims due jobs with
-- FOR UPDATE SKIP LOCKED and completes them in batches.

CREATE TABLE jobs (
    id            uuid PRIMARY KEY,
    queue         text        NOT NULL,
    kind          text        NOT NULL,
    payload       jsonb       NOT NULL,
    state         text        NOT NULL
        CHECK (state IN ('scheduled', 'available', 'running', 'retryable', 'succeeded', 'failed', 'cancelled')),
    priority      smallint    NOT NULL DEFAULT 0,
    attempt       integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL CHECK (max_attempts > 0),
    run_at        timestamptz NOT NULL DEFAULT now(),
    unique_key    text,
    owner         text,
    locked_by     uuid,
    progress      jsonb,
    errors        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);

-- Fetch path: due jobs of one queue in priority, then run_at order. Only
-- pending rows are in it, so finished history does not slow fetching.
CREATE INDEX jobs_fetch ON jobs (queue, priority, run_at, id)
    WHERE state IN ('scheduled', 'available', 'retryable');
-- Unique jobs: at most one pending or running job per key.
CREATE UNIQUE INDEX jobs_unique_pending ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable');
-- Orphan rescue looks up running jobs by holder.
CREATE INDEX jobs_running_holder ON jobs (locked_by) WHERE state = 'running';
CREATE INDEX jobs_owner ON jobs (owner, created_at) WHERE owner IS NOT NULL;

-- Live worker processes; a process that stops heartbeating is presumed dead
-- and the jobs it held are handed back.
CREATE TABLE queue_workers (
    id            uuid PRIMARY KEY,
    name          text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- Wake idle workers when work arrives (one NOTIFY per statement and queue).
CREATE FUNCTION jobs_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dashtam_jobs', q.queue)
    FROM (SELECT DISTINCT queue FROM new_rows WHERE state = 'available') AS q;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify_insert
    AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify_inserted();
