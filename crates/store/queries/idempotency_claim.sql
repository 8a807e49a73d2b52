-- Claims (subject $1, key $2) for a request hashing to $3, leased for $4 ms:
-- a new key, or one whose earlier request with the same hash never answered
-- and whose lease has lapsed (its process died). No row: the key is taken
-- (answered, in progress, or used for another request).
INSERT INTO idempotency_keys AS k (subject, key, request_hash, locked_until)
VALUES ($1, $2, $3, clock_timestamp() + $4::bigint * interval '1 millisecond')
ON CONFLICT (subject, key) DO UPDATE
SET locked_until = EXCLUDED.locked_until, created_at = now()
WHERE k.status IS NULL
  AND k.request_hash = EXCLUDED.request_hash
  AND COALESCE(k.locked_until, '-infinity') < clock_timestamp()
RETURNING true AS "claimed!"
