INSERT INTO audit_records (action, phase, outcome, actor, resource_type, resource_id,
                           correlation_id, reason, context)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
