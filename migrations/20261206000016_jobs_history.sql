-- Finished jobs leave the hot table. `jobs` holds only pending and running
-- jobs (what every claim, completion and rescue touches); a job that
-- succeeds, dies or is cancelled is moved, in the statement that finishes
-- it, to `jobs_done`: partitioned by outcome (succeeded; failed or
-- cancelled, kept longer) and then by the UTC day it finished, so
-- retention drops whole partitions instead of deleting rows (no dead
-- tuples, no vacuum debt). The hot table stays as small as the backlog
-- however long the daemons run, and a transaction held open somewhere
-- only pins the dead versions of jobs still moving through it.
-- `jobs_all` is what readers (the API, the console) look at.

CREATE TABLE jobs_done (
    id               uuid        NOT NULL,
    queue            text        NOT NULL,
    kind             text        NOT NULL,
    payload          jsonb       NOT NULL,
    state            text        NOT NULL CHECK (state IN ('succeeded', 'failed', 'cancelled')),
    priority         smallint    NOT NULL,
    attempt          integer     NOT NULL,
    max_attempts     integer     NOT NULL,
    run_at           timestamptz NOT NULL,
    unique_key       text,
    owner            text,
    locked_by        uuid,
    progress         jsonb,
    errors           jsonb       NOT NULL,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz NOT NULL,
    cancel_requested boolean     NOT NULL,
    watched          boolean     NOT NULL,
    throttle_key     text,
    waiting          jsonb,
    subject          text,
    trace_parent     text
) PARTITION BY LIST (state);

CREATE TABLE jobs_done_succeeded PARTITION OF jobs_done
    FOR VALUES IN ('succeeded') PARTITION BY RANGE (finished_at);
CREATE TABLE jobs_done_dead PARTITION OF jobs_done
    FOR VALUES IN ('failed', 'cancelled') PARTITION BY RANGE (finished_at);
-- Whatever no day partition takes (maintenance behind, a clock far off)
-- lands here rather than failing a completion; pruning deletes from these
-- row by row.
CREATE TABLE jobs_done_succeeded_default PARTITION OF jobs_done_succeeded DEFAULT;
CREATE TABLE jobs_done_dead_default PARTITION OF jobs_done_dead DEFAULT;

-- Lookups by id (ids are unique: a job is in exactly one of the two
-- tables, moved in one statement), the lists by owner and by subject
-- newest first, and the console's per-minute counts (finished_at grows
-- with insertion order, so a BRIN index costs next to nothing).
CREATE INDEX jobs_done_id ON jobs_done (id);
CREATE INDEX jobs_done_owner ON jobs_done (owner, id) WHERE owner IS NOT NULL;
CREATE INDEX jobs_done_subject ON jobs_done (subject, id) WHERE subject IS NOT NULL;
CREATE INDEX jobs_done_finished ON jobs_done USING brin (finished_at);

-- A finished job watched by a live status stream NOTIFYs as its updates
-- did (20261123000007_job_events.sql).
CREATE TRIGGER jobs_done_notify_watched
    AFTER INSERT ON jobs_done
    FOR EACH ROW WHEN (NEW.watched)
    EXECUTE FUNCTION jobs_notify_watched();

-- Creates the day partitions from today to two days ahead and drops
-- those whose whole day is past its outcome's retention. Returns how many
-- jobs the dropped partitions held. Run by the pruning cycle (and at worker
-- start); serialized by an advisory lock, and quick to give up on a lock
-- (lock_timeout) so it never queues completions behind a long reader: what
-- it could not do now it does next time, and until then the default
-- partitions take any row.
CREATE FUNCTION jobs_done_maintain(keep_succeeded interval, keep_dead interval)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    today   timestamptz := date_trunc('day', now(), 'UTC');
    parent  text;
    keep    interval;
    day     timestamptz;
    part    text;
    bound   text;
    dropped bigint := 0;
    n       bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('dashtam:jobs_done_maintain'));
    SET LOCAL lock_timeout = '500ms';
    FOREACH parent IN ARRAY ARRAY['jobs_done_succeeded', 'jobs_done_dead'] LOOP
        keep := CASE parent WHEN 'jobs_done_succeeded' THEN keep_succeeded ELSE keep_dead END;
        FOR i IN 0..2 LOOP
            day := today + i * interval '1 day';
            part := format('%s_p%s', parent, to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'));
            CONTINUE WHEN to_regclass(part) IS NOT NULL
                -- Rows of that day already in the default partition stay
                -- there (attaching would fail); pruning deletes them.
                OR EXISTS (SELECT 1 FROM jobs_done_succeeded_default
                           WHERE parent = 'jobs_done_succeeded'
                             AND finished_at >= day AND finished_at < day + interval '1 day')
                OR EXISTS (SELECT 1 FROM jobs_done_dead_default
                           WHERE parent = 'jobs_done_dead'
                             AND finished_at >= day AND finished_at < day + interval '1 day');
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           part, parent, day, day + interval '1 day');
        END LOOP;
        FOR part, bound IN
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = parent::regclass AND c.relname <> parent || '_default'
        LOOP
            -- "FOR VALUES FROM ('…') TO ('…')": the day it ends.
            CONTINUE WHEN substring(bound FROM $re$TO \('([^']*)'\)$re$)::timestamptz > now() - keep;
            EXECUTE format('SELECT count(*) FROM %I', part) INTO n;
            EXECUTE format('DROP TABLE %I', part);
            dropped := dropped + n;
        END LOOP;
    END LOOP;
    RETURN dropped;
END
$$;

SELECT jobs_done_maintain(interval '7 days', interval '30 days');

INSERT INTO jobs_done
SELECT id, queue, kind, payload, state, priority, attempt, max_attempts, run_at, unique_key,
       owner, NULL, progress, errors, created_at, started_at, COALESCE(finished_at, now()),
       cancel_requested, watched, throttle_key, waiting, subject, trace_parent
FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled');
DELETE FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled');

-- What is left in `jobs` is what the queue works on.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('scheduled', 'available', 'running', 'retryable'));
DROP INDEX jobs_dead;
DROP INDEX jobs_owner;
CREATE INDEX jobs_owner ON jobs (owner, id) WHERE owner IS NOT NULL;

-- Jobs `ids` (running, locked by the caller) whose worker no longer runs
-- them go back to the queue with `message` in their errors, or, when that
-- was their last attempt, die: moved to jobs_done as failed. Returns each
-- one's id, queue, kind and attempt. Shared by the orphan rescue and the
-- release of claims lost in a database crash.
CREATE FUNCTION jobs_give_back(ids uuid[], message text)
RETURNS TABLE (id uuid, queue text, kind text, attempt integer)
LANGUAGE sql AS $$
WITH again AS (
    UPDATE jobs AS j
    SET state = 'available', run_at = now(), locked_by = NULL,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempt, 'at', now(), 'error', message))
    WHERE j.id = ANY (ids) AND j.attempt < j.max_attempts
    RETURNING j.id, j.queue, j.kind, j.attempt
),
dead AS (
    DELETE FROM jobs AS j
    WHERE j.id = ANY (ids) AND j.attempt >= j.max_attempts
    RETURNING j.*
),
buried AS (
    INSERT INTO jobs_done (id, queue, kind, payload, state, priority, attempt, max_attempts, run_at,
                           unique_key, owner, locked_by, progress, errors, created_at, started_at,
                           finished_at, cancel_requested, watched, throttle_key, waiting, subject,
                           trace_parent)
    SELECT d.id, d.queue, d.kind, d.payload, 'failed', d.priority, d.attempt, d.max_attempts,
           now(), d.unique_key, d.owner, NULL, d.progress,
           d.errors || jsonb_build_array(jsonb_build_object(
               'attempt', d.attempt, 'at', now(), 'error', message)),
           d.created_at, d.started_at, now(), d.cancel_requested, d.watched, d.throttle_key,
           d.waiting, d.subject, d.trace_parent
    FROM dead AS d
    RETURNING jobs_done.id, jobs_done.queue, jobs_done.kind, jobs_done.attempt
)
SELECT a.id, a.queue, a.kind, a.attempt FROM again AS a
UNION ALL
SELECT b.id, b.queue, b.kind, b.attempt FROM buried AS b
$$;

-- Every job, pending, running or finished, for readers.
CREATE VIEW jobs_all AS
SELECT id, queue, kind, payload, state, priority, attempt, max_attempts, run_at, unique_key,
       owner, locked_by, progress, errors, created_at, started_at, finished_at,
       cancel_requested, watched, throttle_key, waiting, subject, trace_parent
FROM jobs
UNION ALL
SELECT id, queue, kind, payload, state, priority, attempt, max_attempts, run_at, unique_key,
       owner, locked_by, progress, errors, created_at, started_at, finished_at,
       cancel_requested, watched, throttle_key, waiting, subject, trace_parent
FROM jobs_done;
