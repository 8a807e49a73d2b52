-- The best priority of queue $1 that has a due job, and up to $3 owners
-- with pending jobs whose name sorts after $2, each with whether it has a
-- due job at that priority (a skip scan over jobs_fair: one probe per
-- owner, however many jobs each has). None while the queue is paused.
-- Only jobs from the claim floor $4 on (see fetch.sql).
WITH RECURSIVE prio AS (
    -- The priorities that had pending jobs when the floor was read ($5),
    -- and the best one up to $6 (just below those) that has some now: an
    -- urgent job is claimed at once; one at a worse priority new since the
    -- read waits for the next read, two seconds at most.
    SELECT p.priority FROM unnest($5::smallint[]) AS p(priority)
    WHERE NOT EXISTS (SELECT 1 FROM queue_pauses q WHERE q.queue = $1)
    UNION
    (SELECT priority FROM jobs
     WHERE queue = $1 AND state IN ('scheduled', 'available', 'retryable') AND run_at >= $4
       AND priority <= $6::smallint
       AND NOT EXISTS (SELECT 1 FROM queue_pauses q WHERE q.queue = $1)
     ORDER BY priority LIMIT 1)
),
top AS MATERIALIZED (
    SELECT prio.priority FROM prio, LATERAL (
        SELECT 1 FROM jobs d
        WHERE d.queue = $1 AND d.priority = prio.priority
          AND d.state IN ('scheduled', 'available', 'retryable')
          AND d.run_at >= $4 AND d.run_at <= now()
        LIMIT 1) due
    WHERE prio.priority IS NOT NULL
    ORDER BY prio.priority
    LIMIT 1
),
owners AS (
    (SELECT j.owner, 1 AS n FROM jobs j, top
     WHERE j.queue = $1 AND j.state IN ('scheduled', 'available', 'retryable')
       AND j.owner > $2 AND j.run_at >= $4
     ORDER BY j.owner LIMIT 1)
    UNION ALL
    SELECT (SELECT j.owner FROM jobs j
            WHERE j.queue = $1 AND j.state IN ('scheduled', 'available', 'retryable')
              AND j.owner > owners.owner AND j.run_at >= $4
            ORDER BY j.owner LIMIT 1), owners.n + 1
    FROM owners WHERE owners.owner IS NOT NULL AND owners.n < $3::bigint
)
SELECT top.priority AS "priority!", o.owner AS "owner!", EXISTS (
    SELECT 1 FROM jobs d
    WHERE d.queue = $1 AND d.priority = top.priority AND d.owner = o.owner
      AND d.state IN ('scheduled', 'available', 'retryable')
      AND d.run_at >= $4 AND d.run_at <= now()
) AS "due!"
FROM owners o, top
WHERE o.owner IS NOT NULL
ORDER BY o.owner
