UPDATE scheduler_ticks
SET finished_at = clock_timestamp(), enqueued = $3, flagged = $4
WHERE cycle = $1 AND tick = $2
