-- The claims the database says worker $1 holds, for it to reconcile with
-- what it is really running.
SELECT id, started_at AS "started_at!" FROM jobs WHERE locked_by = $1 AND state = 'running'
