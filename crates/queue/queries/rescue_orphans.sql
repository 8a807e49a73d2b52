-- Jobs held by a worker whose heartbeat is older than $1 seconds go back to
-- the queue, or die (to jobs_done) if that was their last attempt
-- (jobs_give_back, in the migrations).
WITH orphans AS (
    SELECT j.id FROM jobs j
    WHERE j.state = 'running'
      AND NOT EXISTS (
          SELECT 1 FROM queue_workers w
          WHERE w.id = j.locked_by AND w.heartbeat_at >= now() - $1::float8 * interval '1 second')
    FOR UPDATE OF j SKIP LOCKED
)
SELECT g.id AS "id!", g.queue AS "queue!", g.kind AS "kind!", g.attempt AS "attempt!"
FROM jobs_give_back(ARRAY(SELECT id FROM orphans), 'worker stopped heartbeating; job rescued') AS g
