-- Shutdown: jobs we could not finish go back to the queue; the interrupted
-- attempt is not counted against them.
UPDATE jobs
SET state = 'available', locked_by = NULL, attempt = GREATEST(attempt - 1, 0), run_at = now()
WHERE id = ANY($1::uuid[]) AND state = 'running' AND locked_by = $2
