SELECT request_hash, status, content_type, location, body,
       GREATEST(EXTRACT(EPOCH FROM (locked_until - clock_timestamp())), 0)::float8 AS lease_left_secs
FROM idempotency_keys
WHERE subject = $1 AND key = $2
