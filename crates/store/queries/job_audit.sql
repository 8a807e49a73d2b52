-- A job's audit trail: the records its runs wrote (correlated by the job's
-- id) and the operators' and clients' actions on it, oldest first.
SELECT id, action, phase, outcome, actor, resource_type, resource_id, correlation_id, reason,
       context, created_at
FROM audit_records
WHERE correlation_id = $1 OR (resource_type = 'job' AND resource_id = $1)
ORDER BY id
LIMIT $2
