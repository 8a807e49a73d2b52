-- Claim up to $2 due jobs of queue $1 for worker $3 (none while the queue
-- is paused).
WITH next AS (
    SELECT id FROM jobs
    WHERE queue = $1
      AND state IN ('scheduled', 'available', 'retryable')
      AND run_at <= now()
      AND NOT EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue = $1)
    ORDER BY priority, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs AS j
SET state = 'running', attempt = j.attempt + 1, locked_by = $3, started_at = now()
FROM next
WHERE j.id = next.id
RETURNING j.id, j.queue, j.kind, j.payload, j.attempt, j.max_attempts, j.owner, j.run_at
