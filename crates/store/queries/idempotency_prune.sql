DELETE FROM idempotency_keys WHERE created_at < now() - $1::float8 * interval '1 second'
