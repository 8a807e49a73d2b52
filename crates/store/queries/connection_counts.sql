SELECT provider, status, count(*) FROM provider_connections GROUP BY provider, status
