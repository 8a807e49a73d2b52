-- Claim up to $2 due jobs of queue $1 for worker $3 (none while the queue
-- is paused): jobs of the best priority that has a due job, shared fairly
-- between their owners, then any shortfall in priority, run_at order.
--
-- Fair share: owners are visited in rotation, starting after $4 (the last
-- owner the worker's previous claim served; wrapping round), at most
-- 2 * $2 + 8 visits. Each owner with a due job and room under the per-owner
-- cap $5 (0: no cap) is a bucket, and so are the jobs without an owner;
-- each bucket gets an equal share of the claim. What the shares leave (a
-- bucket with fewer due jobs than its share) is filled in priority, run_at
-- order, from jobs without an owner and, when there is no cap, from anyone.
-- See docs/ARCHITECTURE.md ("Fair claims") for the plans.
--
-- Priorities are walked one at a time (a skip scan over the priorities that
-- have pending jobs), so the `run_at <= now()` bound limits each index
-- scan: in one scan ordered by (priority, run_at) it could only filter, and
-- a claim that came back short walked every job scheduled for later.
WITH RECURSIVE prio AS (
    (SELECT priority FROM jobs
     WHERE queue = $1 AND state IN ('scheduled', 'available', 'retryable')
       AND NOT EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue = $1)
     ORDER BY priority LIMIT 1)
    UNION ALL
    SELECT (SELECT j.priority FROM jobs j
            WHERE j.queue = $1 AND j.state IN ('scheduled', 'available', 'retryable')
              AND j.priority > prio.priority
            ORDER BY j.priority LIMIT 1)
    FROM prio WHERE prio.priority IS NOT NULL
),
top AS MATERIALIZED (
    SELECT prio.priority FROM prio
    WHERE prio.priority IS NOT NULL AND EXISTS (
        SELECT 1 FROM jobs
        WHERE queue = $1 AND priority = prio.priority
          AND state IN ('scheduled', 'available', 'retryable') AND run_at <= now())
    LIMIT 1
),
-- Owners with pending jobs at the top priority: after the cursor, then from
-- the start (a skip scan each).
after AS (
    (SELECT j.owner, 1 AS n FROM jobs j, top
     WHERE j.queue = $1 AND j.priority = top.priority
       AND j.state IN ('scheduled', 'available', 'retryable') AND j.owner > $4
     ORDER BY j.owner LIMIT 1)
    UNION ALL
    SELECT (SELECT j.owner FROM jobs j, top
            WHERE j.queue = $1 AND j.priority = top.priority
              AND j.state IN ('scheduled', 'available', 'retryable') AND j.owner > after.owner
            ORDER BY j.owner LIMIT 1), after.n + 1
    FROM after WHERE after.owner IS NOT NULL AND after.n < 2 * $2 + 8
),
wrapped AS (
    (SELECT j.owner, 1 AS n FROM jobs j, top
     WHERE j.queue = $1 AND j.priority = top.priority
       AND j.state IN ('scheduled', 'available', 'retryable') AND j.owner IS NOT NULL
       AND j.owner <= $4
     ORDER BY j.owner LIMIT 1)
    UNION ALL
    SELECT (SELECT j.owner FROM jobs j, top
            WHERE j.queue = $1 AND j.priority = top.priority
              AND j.state IN ('scheduled', 'available', 'retryable') AND j.owner > wrapped.owner
              AND j.owner <= $4
            ORDER BY j.owner LIMIT 1), wrapped.n + 1
    FROM wrapped WHERE wrapped.owner IS NOT NULL AND wrapped.n < 2 * $2 + 8
),
visited AS MATERIALIZED (
    SELECT owner, ord FROM (
        SELECT owner, n AS ord FROM after WHERE owner IS NOT NULL
        UNION ALL
        SELECT owner, 1000000 + n FROM wrapped WHERE owner IS NOT NULL
    ) o
    LIMIT 2 * $2 + 8
),
buckets AS MATERIALIZED (
    SELECT v.owner, v.ord, room.left AS room
    FROM visited v, top, LATERAL (
        SELECT 1 FROM jobs d
        WHERE d.queue = $1 AND d.priority = top.priority AND d.owner = v.owner
          AND d.state IN ('scheduled', 'available', 'retryable') AND d.run_at <= now()
        LIMIT 1
    ) due, LATERAL (
        SELECT CASE WHEN $5 <= 0 THEN $2 ELSE $5 - (
            SELECT count(*) FROM (
                SELECT 1 FROM jobs r
                WHERE r.queue = $1 AND r.owner = v.owner AND r.state = 'running'
                LIMIT $5) x)
        END AS left
    ) room
    WHERE room.left > 0
    ORDER BY v.ord
    LIMIT $2
),
ownerless AS MATERIALIZED (
    SELECT EXISTS (
        SELECT 1 FROM jobs d, top
        WHERE d.queue = $1 AND d.priority = top.priority AND d.owner IS NULL
          AND d.state IN ('scheduled', 'available', 'retryable') AND d.run_at <= now()
        LIMIT 1
    ) AS due
),
share AS MATERIALIZED (
    SELECT ceil($2::numeric / greatest(1,
        (SELECT count(*) FROM buckets) + (SELECT count(*) FROM ownerless WHERE due)))::bigint AS q
),
shares AS MATERIALIZED (
    SELECT b.ord, d.id, d.run_at
    FROM buckets b, share, top, LATERAL (
        SELECT id, run_at FROM jobs
        WHERE queue = $1 AND priority = top.priority AND owner = b.owner
          AND state IN ('scheduled', 'available', 'retryable') AND run_at <= now()
        ORDER BY run_at, id
        LIMIT least(share.q, b.room)
        FOR UPDATE SKIP LOCKED
    ) d
    UNION ALL
    SELECT 0, d.id, d.run_at
    FROM ownerless, share, top, LATERAL (
        SELECT id, run_at FROM jobs
        WHERE queue = $1 AND priority = top.priority AND owner IS NULL
          AND state IN ('scheduled', 'available', 'retryable') AND run_at <= now()
        ORDER BY run_at, id
        LIMIT share.q
        FOR UPDATE SKIP LOCKED
    ) d
    WHERE ownerless.due
),
fair AS MATERIALIZED (
    SELECT id FROM (
        SELECT id, ord, row_number() OVER (PARTITION BY ord ORDER BY run_at, id) AS rn
        FROM shares
    ) s
    ORDER BY rn, ord
    LIMIT $2
),
fill AS (
    SELECT due.id
    FROM prio, LATERAL (
        SELECT id, run_at FROM jobs
        WHERE queue = $1 AND priority = prio.priority
          AND state IN ('scheduled', 'available', 'retryable')
          AND run_at <= now()
          AND ($5 <= 0 OR owner IS NULL)
          AND id <> ALL (ARRAY(SELECT id FROM fair))
        ORDER BY run_at, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE prio.priority IS NOT NULL
    ORDER BY prio.priority, due.run_at, due.id
    LIMIT greatest(0, $2 - (SELECT count(*) FROM fair))
),
-- The last owner served: the next claim starts after it.
turn AS (SELECT owner FROM buckets ORDER BY ord DESC LIMIT 1),
next AS (
    SELECT id FROM fair
    UNION ALL
    SELECT id FROM fill
)
UPDATE jobs AS j
SET state = 'running', attempt = j.attempt + 1, locked_by = $3, started_at = now(), waiting = NULL
FROM next
WHERE j.id = next.id
RETURNING j.id, j.queue, j.kind, j.payload, j.attempt, j.max_attempts, j.owner, j.throttle_key, j.run_at, j.started_at,
    (SELECT owner FROM turn) AS turn
