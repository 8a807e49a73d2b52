SELECT provider, breaker, changed_at, probe_at, probe_holder, trips, paused_until, reason
FROM provider_health ORDER BY provider
