-- Jobs by id, for a batch of lookups (ids may repeat; missing ones are absent).
SELECT id, queue, kind, payload, state AS "state: JobState", priority, attempt, max_attempts,
       run_at, unique_key, owner, throttle_key, subject, waiting, locked_by, cancel_requested,
       progress, errors, created_at, started_at, finished_at
FROM jobs WHERE id = ANY($1)
