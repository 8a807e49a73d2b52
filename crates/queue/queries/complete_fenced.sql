-- A handler completes its own job inside the transaction that commits its
-- work, so the work and the job's success are durable together: the job
-- leaves the hot table for jobs_done. Fenced by the claim ($2 holder, $3
-- the claim's start): no row means the claim was lost (rescued, or undone
-- by a database crash) and the caller must roll its work back.
-- "Running" and the holder are spelt so that no plan can walk this worker's
-- entries in jobs_running_holder instead of probing the primary key (see
-- complete_succeeded.sql). With a transaction holding vacuum back (that
-- index then keeps every running version since), this statement and its
-- sibling were busy on CPU in most samples while a soak's throughput
-- halved in two minutes; spelt this way they no longer showed.
WITH done AS (
    DELETE FROM jobs
    WHERE id = $1 AND state NOT IN ('scheduled', 'available', 'retryable')
      AND locked_by IS NOT DISTINCT FROM $2 AND started_at = $3
    RETURNING *
)
INSERT INTO jobs_done (id, queue, kind, payload, state, priority, attempt, max_attempts, run_at,
                       unique_key, owner, locked_by, progress, errors, created_at, started_at,
                       finished_at, cancel_requested, watched, throttle_key, waiting, subject,
                       trace_parent)
SELECT id, queue, kind, payload, 'succeeded', priority, attempt, max_attempts, run_at,
       unique_key, owner, NULL, COALESCE($4, progress), errors, created_at, started_at,
       now(), cancel_requested, watched, throttle_key, waiting, subject, trace_parent
FROM done
RETURNING id
