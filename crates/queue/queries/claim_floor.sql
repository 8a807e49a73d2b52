-- The claim floor of queue $1 and the priorities it has pending jobs at
-- (a skip scan: one probe per priority): the oldest run_at of its pending
-- jobs, or now if it has none, less $2 seconds
-- for jobs enqueued (run_at = their transaction's start) by transactions
-- that had not committed yet. Every later pending job gets a run_at of at
-- least now() (enqueues, retries, snoozes, rescues), so claims need not
-- look below the floor until it is read again. This is the one walk over
-- the old end of the pending-jobs index (where the entries of every job
-- claimed since the last vacuum lie, or since the oldest open transaction
-- if one holds vacuum back).
WITH RECURSIVE prio AS (
    (SELECT priority FROM jobs
     WHERE queue = $1 AND state IN ('scheduled', 'available', 'retryable')
     ORDER BY priority LIMIT 1)
    UNION ALL
    SELECT (SELECT j.priority FROM jobs j
            WHERE j.queue = $1 AND j.state IN ('scheduled', 'available', 'retryable')
              AND j.priority > prio.priority
            ORDER BY j.priority LIMIT 1)
    FROM prio WHERE prio.priority IS NOT NULL
)
SELECT LEAST(now(), min(first.run_at)) - $2::float8 * interval '1 second' AS "floor!",
       COALESCE(array_agg(prio.priority ORDER BY prio.priority)
                    FILTER (WHERE prio.priority IS NOT NULL), '{}') AS "priorities!: Vec<i16>"
FROM prio
LEFT JOIN LATERAL (
    SELECT run_at FROM jobs
    WHERE queue = $1 AND priority = prio.priority
      AND state IN ('scheduled', 'available', 'retryable')
    ORDER BY run_at LIMIT 1
) first ON true
