-- Batched completion; a job rescued from us meanwhile is left alone. The
-- join on unnest keeps the plan on the primary key (a bare `id = ANY($1)`
-- next to `locked_by = $2` tempted the planner into scanning every job this
-- worker holds).
UPDATE jobs AS j
SET state = 'succeeded', finished_at = now(), locked_by = NULL
FROM unnest($1::uuid[]) AS u(id)
WHERE j.id = u.id AND j.state = 'running' AND j.locked_by = $2
