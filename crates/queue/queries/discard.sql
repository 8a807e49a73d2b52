-- Finished jobs only: pending or running ones are cancelled first.
DELETE FROM jobs_done WHERE id = $1
RETURNING id, queue, kind, payload, state AS "state: JobState", priority, attempt, max_attempts,
          run_at, unique_key, owner, throttle_key, subject, waiting, locked_by, cancel_requested,
          progress, errors, created_at, started_at, finished_at
