-- Claim up to $2 due jobs of queue $1 for worker $3 (none while the queue
-- is paused), in priority, then run_at order; with a per-owner cap ($4 > 0)
-- only jobs without an owner (owned jobs are claimed through their owner's
-- share, fetch_fair.sql, where the cap is checked). Only jobs from the
-- claim floor $5 on (claim_floor.sql: no pending job is older), so no
-- scan steps over the index entries of jobs claimed long ago.
--
-- Walked one priority at a time (those the floor's read found pending,
-- $6, and a better one if one turned up since), so the `run_at` bounds
-- delimit each index scan: in one scan ordered by (priority, run_at) they
-- could only filter, and a claim that came back short walked every job
-- scheduled for later (43 ms with a million of them, against ~1 ms this
-- way).
WITH prio AS (
    -- The priorities that had pending jobs when the floor was read ($6),
    -- and the best one up to $7 (just below those) that has some now: an
    -- urgent job is claimed at once; one at a worse priority new since the
    -- read waits for the next read, two seconds at most.
    SELECT p.priority FROM unnest($6::smallint[]) AS p(priority)
    WHERE NOT EXISTS (SELECT 1 FROM queue_pauses q WHERE q.queue = $1)
    UNION
    (SELECT priority FROM jobs
     WHERE queue = $1 AND state IN ('scheduled', 'available', 'retryable') AND run_at >= $5
       AND priority <= $7::smallint
       AND NOT EXISTS (SELECT 1 FROM queue_pauses q WHERE q.queue = $1)
     ORDER BY priority LIMIT 1)
),
next AS (
    SELECT due.id
    FROM prio, LATERAL (
        SELECT id, run_at FROM jobs
        WHERE queue = $1 AND priority = prio.priority
          AND state IN ('scheduled', 'available', 'retryable')
          AND run_at >= $5::timestamptz AND run_at <= now()
          AND ($4::bigint <= 0 OR owner IS NULL)
        ORDER BY run_at, id
        LIMIT $2::bigint
        FOR UPDATE SKIP LOCKED
    ) AS due
    ORDER BY prio.priority, due.run_at, due.id
    LIMIT $2
)
UPDATE jobs AS j
SET state = 'running', attempt = j.attempt + 1, locked_by = $3, started_at = now(), waiting = NULL
FROM next
WHERE j.id = next.id
RETURNING j.id, j.queue, j.kind, j.payload, j.attempt, j.max_attempts, j.owner, j.throttle_key,
          j.run_at, j.started_at AS "started_at!", j.trace_parent
