-- Another pending or running job holding the unique key of finished job $1.
SELECT h.id
FROM jobs_done t
JOIN jobs h ON h.unique_key = t.unique_key
WHERE t.id = $1 AND t.unique_key IS NOT NULL
LIMIT 1
