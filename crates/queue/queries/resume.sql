WITH gone AS (DELETE FROM queue_pauses WHERE queue = $1 RETURNING queue)
SELECT pg_notify('dashtam_jobs', queue) AS "notified!" FROM gone
