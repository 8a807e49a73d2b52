-- Closes every ATTEMPT record of the given job attempts ($1 job id as the
-- correlation id, $2 attempt, $3 reason) that has no OUTCOME yet, with an
-- `abandoned` OUTCOME (`sync_abandoned`, `token_refresh_abandoned`). An
-- ATTEMPT's OUTCOME is a later record of the same job attempt and the same
-- family of actions (sync_*; token_refresh_* and reauth_required).
INSERT INTO audit_records (action, phase, outcome, actor, resource_type, resource_id,
                           correlation_id, reason, context)
SELECT regexp_replace(a.action, '_attempted$', '_abandoned'), 'outcome', 'abandoned',
       'system:queue', a.resource_type, a.resource_id, a.correlation_id, u.reason, a.context
FROM unnest($1::text[], $2::int[], $3::text[]) AS u(job, attempt, reason)
JOIN audit_records a
  ON a.correlation_id = u.job AND a.phase = 'attempt' AND (a.context->>'attempt')::int = u.attempt
WHERE NOT EXISTS (
    SELECT 1 FROM audit_records o
    WHERE o.correlation_id = a.correlation_id AND o.phase = 'outcome' AND o.id > a.id
      AND (o.context->>'attempt')::int = u.attempt
      AND split_part(CASE WHEN o.action = 'reauth_required' THEN 'token_refresh' ELSE o.action END, '_', 1)
          = split_part(a.action, '_', 1))
