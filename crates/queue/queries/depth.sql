-- Pending and running jobs per queue and state. Only the unfinished states:
-- the partial indexes cover them, so this stays cheap with millions of
-- finished rows (and reads a million queued ones in well under a second).
SELECT queue, state, count(*) AS "jobs!"
FROM jobs
WHERE state IN ('scheduled', 'available', 'running', 'retryable')
GROUP BY queue, state
