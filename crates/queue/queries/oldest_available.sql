-- Per queue, how long the oldest job that could run has been waiting.
SELECT queue, extract(epoch FROM now() - min(run_at))::float8 AS "waited_secs!"
FROM jobs
WHERE state IN ('available', 'retryable') AND run_at <= now()
GROUP BY queue
