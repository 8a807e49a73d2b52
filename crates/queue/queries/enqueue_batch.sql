-- Single enqueues (one, or several that arrived together) in one statement
-- and one commit: a pending job with a row's unique key wins and is
-- returned instead. The caller makes unique keys distinct within
-- the batch; rows go in in key order, so two batches never wait on each
-- other's keys in a cycle. A request with neither a new nor an existing
-- row (the winner finished meanwhile) is not answered here: it is retried.
WITH req AS (
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[],
                $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
         AS u(id, queue, kind, payload, priority, max_attempts, run_at, owner, unique_key, throttle_key, subject, trace_parent)
),
ins AS (
    INSERT INTO jobs (id, queue, kind, payload, state, priority, max_attempts, run_at, unique_key, owner, throttle_key, subject, trace_parent)
    SELECT id, queue, kind, payload,
           CASE WHEN run_at > now() THEN 'scheduled' ELSE 'available' END,
           priority, max_attempts, GREATEST(run_at, now()), unique_key, owner, throttle_key, subject, trace_parent
    FROM req
    ORDER BY unique_key
    ON CONFLICT (unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')
        DO NOTHING
    RETURNING id, queue, kind, payload, state, priority, attempt, max_attempts, run_at,
              unique_key, owner, throttle_key, subject, waiting, locked_by, cancel_requested,
              progress, errors, created_at, started_at, finished_at, true AS created
),
rows AS (
    SELECT * FROM ins
    UNION ALL
    SELECT j.id, j.queue, j.kind, j.payload, j.state, j.priority, j.attempt, j.max_attempts,
           j.run_at, j.unique_key, j.owner, j.throttle_key, j.subject, j.waiting, j.locked_by,
           j.cancel_requested, j.progress, j.errors, j.created_at, j.started_at, j.finished_at,
           false AS created
    FROM req JOIN jobs j ON j.unique_key = req.unique_key
    WHERE j.state IN ('scheduled', 'available', 'running', 'retryable')
      AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.id = req.id)
)
-- (Through the union the macros cannot tell which columns are never null.)
SELECT id AS "id!", queue AS "queue!", kind AS "kind!", payload AS "payload!",
       state AS "state!: JobState", priority AS "priority!", attempt AS "attempt!",
       max_attempts AS "max_attempts!", run_at AS "run_at!", unique_key, owner, throttle_key,
       subject, waiting, locked_by, cancel_requested AS "cancel_requested!", progress,
       errors AS "errors!", created_at AS "created_at!", started_at, finished_at,
       created AS "created!"
FROM rows
