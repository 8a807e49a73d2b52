SELECT provider, status, count(*) AS "connections!" FROM provider_connections GROUP BY provider, status
