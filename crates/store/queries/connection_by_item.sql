SELECT id, user_id, status
FROM provider_connections
WHERE provider = $1 AND provider_item_id = $2
