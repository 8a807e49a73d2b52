-- Batched completion; a job rescued from us meanwhile is left alone.
UPDATE jobs
SET state = 'succeeded', finished_at = now(), locked_by = NULL
WHERE id = ANY($1::uuid[]) AND state = 'running' AND locked_by = $2
