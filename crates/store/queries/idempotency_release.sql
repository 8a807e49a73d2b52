DELETE FROM idempotency_keys WHERE subject = $1 AND key = $2 AND status IS NULL
