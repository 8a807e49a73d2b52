-- Active connections of provider $1 not synced since $2, or never
-- (index provider_connections_sync_due): at most $3 of each user (0: no
-- cap), those synced longest ago first, so a user's backlog is taken in
-- turns over the following ticks.
SELECT id AS "id!", user_id AS "user_id!" FROM (
    SELECT id, user_id,
           row_number() OVER (PARTITION BY user_id ORDER BY last_sync_at NULLS FIRST, id) AS n
    FROM provider_connections
    WHERE status = 'active' AND provider = $1 AND (last_sync_at IS NULL OR last_sync_at < $2)
) due
WHERE $3::bigint <= 0 OR n <= $3::bigint
