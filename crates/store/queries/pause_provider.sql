-- Provider $1 asked everyone to wait until $2 (a 429 with Retry-After).
INSERT INTO provider_health AS h (provider, paused_until)
VALUES ($1, $2)
ON CONFLICT (provider) DO UPDATE
SET paused_until = GREATEST(h.paused_until, EXCLUDED.paused_until)
