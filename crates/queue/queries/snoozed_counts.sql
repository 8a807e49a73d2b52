-- Pending jobs waiting on their throttle key (snoozed), per key.
SELECT throttle_key AS "throttle_key!", count(*) AS "jobs!" FROM jobs
WHERE throttle_key IS NOT NULL AND waiting IS NOT NULL
  AND state IN ('scheduled', 'available', 'retryable')
GROUP BY throttle_key
