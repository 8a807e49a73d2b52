SELECT EXISTS (SELECT 1 FROM provider_connections WHERE id = $1) AS "exists!"
