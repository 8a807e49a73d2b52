UPDATE idempotency_keys
SET status = $3, content_type = $4, location = $5, body = $6, locked_until = NULL
WHERE subject = $1 AND key = $2
