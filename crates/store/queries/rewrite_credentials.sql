UPDATE provider_connections AS c
SET credentials = u.credentials
FROM unnest($1::uuid[], $2::bytea[]) AS u (id, credentials)
WHERE c.id = u.id
