-- Claims the database says worker $1 holds but the worker is not running and
-- has no outcome for (its completion or its claim's undoing was lost with a
-- database crash): back to the queue, or dead (to jobs_done) if that was the
-- last attempt (jobs_give_back, in the migrations).
WITH strays AS (
    SELECT j.id
    FROM jobs j JOIN unnest($2::uuid[], $3::timestamptz[]) AS u(id, started_at)
        ON j.id = u.id AND j.started_at = u.started_at
    WHERE j.state = 'running' AND j.locked_by = $1
    FOR UPDATE OF j
)
SELECT g.id AS "id!", g.queue AS "queue!", g.kind AS "kind!", g.attempt AS "attempt!"
FROM jobs_give_back(
    ARRAY(SELECT id FROM strays),
    'the worker holding this job was not running it (state lost in a database crash); job rescued'
) AS g
