UPDATE provider_connections SET status = $2, updated_at = now() WHERE id = $1
