-- Take or keep the lease: granted if nobody holds it, we hold it, or the
-- holder let it expire. A new holder starts a new term. Returns the term
-- when we lead, nothing otherwise.
INSERT INTO scheduler_leases AS l (name, holder, term, acquired_at, expires_at)
VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3::float8))
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder,
    term = CASE WHEN l.holder = EXCLUDED.holder THEN l.term ELSE l.term + 1 END,
    acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at ELSE now() END,
    expires_at = EXCLUDED.expires_at
WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
RETURNING term
