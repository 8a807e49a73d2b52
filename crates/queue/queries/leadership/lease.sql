SELECT holder, term, acquired_at, expires_at, expires_at > now() AS "live!"
FROM scheduler_leases
WHERE name = $1
