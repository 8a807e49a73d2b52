-- Bulk enqueue: one statement, one NOTIFY per queue with available jobs
-- (delivered when the caller's transaction commits). A job whose unique key
-- is held by a pending job is skipped (so is a later one of the same batch).
-- Returns how many went in per queue and kind (not a row per job).
WITH ins AS (
INSERT INTO jobs (id, queue, kind, payload, state, priority, max_attempts, run_at, owner, unique_key, throttle_key, subject, trace_parent)
SELECT u.id, u.queue, u.kind, u.payload,
       CASE WHEN u.run_at > now() THEN 'scheduled' ELSE 'available' END,
       u.priority, u.max_attempts, GREATEST(u.run_at, now()), u.owner, u.unique_key, u.throttle_key,
       u.subject, u.trace_parent
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[],
            $7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
     AS u(id, queue, kind, payload, priority, max_attempts, run_at, owner, unique_key, throttle_key, subject, trace_parent)
ON CONFLICT (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')
    DO NOTHING
RETURNING queue, kind, state
),
woken AS (
    SELECT count(pg_notify('dashtam_jobs', q.queue)) AS queues
    FROM (SELECT DISTINCT queue FROM ins WHERE state = 'available') AS q
)
SELECT queue AS "queue!", kind AS "kind!", count(*) AS "jobs!" FROM ins CROSS JOIN woken GROUP BY queue, kind
