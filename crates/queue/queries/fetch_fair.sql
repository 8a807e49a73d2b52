-- Claim up to $2 due jobs of queue $1 for worker $3, shared between the
-- owners $4 (served in that order) at priority $6: each gets an equal share,
-- ceil($2 / owners), of its oldest due jobs, and no more than leaves it
-- under $5 jobs running in the queue (0: no cap); the shares are taken
-- round-robin (each owner's first, then each one's second, ...). What the
-- shares leave is filled in priority, run_at order: from anyone without a
-- cap, only from jobs without an owner with one. None while the queue is
-- paused. Only jobs from the claim floor $7 on (see fetch.sql). See
-- docs/ARCHITECTURE.md ("Fair claims").
WITH prio AS (
    -- The priorities that had pending jobs when the floor was read ($8),
    -- and the best one up to $9 (just below those) that has some now: an
    -- urgent job is claimed at once; one at a worse priority new since the
    -- read waits for the next read, two seconds at most.
    SELECT p.priority FROM unnest($8::smallint[]) AS p(priority)
    WHERE NOT EXISTS (SELECT 1 FROM queue_pauses q WHERE q.queue = $1)
    UNION
    (SELECT priority FROM jobs
     WHERE queue = $1 AND state IN ('scheduled', 'available', 'retryable') AND run_at >= $7
       AND priority <= $9::smallint
       AND NOT EXISTS (SELECT 1 FROM queue_pauses q WHERE q.queue = $1)
     ORDER BY priority LIMIT 1)
),
shares AS MATERIALIZED (
    SELECT o.ord, d.id, d.run_at
    FROM unnest($4::text[]) WITH ORDINALITY AS o(owner, ord),
    LATERAL (
        SELECT CASE WHEN $5::bigint <= 0 THEN $2::bigint ELSE $5::bigint - (
            SELECT count(*) FROM (
                SELECT 1 FROM jobs r
                WHERE r.queue = $1 AND r.owner = o.owner AND r.state = 'running'
                LIMIT $5) running)
        END AS room
    ) room,
    LATERAL (
        SELECT j.id, j.run_at FROM jobs j
        WHERE j.queue = $1 AND j.priority = $6::smallint AND j.owner = o.owner
          AND j.state IN ('scheduled', 'available', 'retryable')
          AND j.run_at >= $7::timestamptz AND j.run_at <= now()
          AND EXISTS (SELECT 1 FROM prio)
        ORDER BY j.run_at, j.id
        LIMIT least(ceil($2::numeric / cardinality($4::text[]))::bigint, room.room)
        FOR UPDATE SKIP LOCKED
    ) d
    WHERE room.room > 0
),
fair AS MATERIALIZED (
    SELECT s.id FROM (
        SELECT id, ord, row_number() OVER (PARTITION BY ord ORDER BY run_at, id) AS rn
        FROM shares
    ) s
    ORDER BY s.rn, s.ord
    LIMIT $2
),
fill AS (
    SELECT due.id
    FROM prio, LATERAL (
        SELECT id, run_at FROM jobs
        WHERE queue = $1 AND priority = prio.priority
          AND state IN ('scheduled', 'available', 'retryable')
          AND run_at >= $7 AND run_at <= now()
          AND ($5::bigint <= 0 OR owner IS NULL)
          AND id <> ALL (ARRAY(SELECT id FROM fair))
        ORDER BY run_at, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE prio.priority IS NOT NULL
    ORDER BY prio.priority, due.run_at, due.id
    LIMIT greatest(0, $2 - (SELECT count(*) FROM fair))
),
-- The LIMIT tells the planner how few rows come (the fill's own limit is
-- unknown at planning): without it, it hashed the whole table to join them.
next AS (
    (SELECT id FROM fair
     UNION ALL
     SELECT id FROM fill)
    LIMIT $2
)
UPDATE jobs AS j
SET state = 'running', attempt = j.attempt + 1, locked_by = $3, started_at = now(), waiting = NULL
FROM next
WHERE j.id = next.id
RETURNING j.id, j.queue, j.kind, j.payload, j.attempt, j.max_attempts, j.owner, j.throttle_key,
          j.run_at, j.started_at AS "started_at!", j.trace_parent
