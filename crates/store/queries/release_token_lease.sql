-- Gives the token lease up; no row: it was not ours any more (it expired
-- and someone else took it), and the holder must not write.
UPDATE provider_connections
SET token_lease_holder = NULL, token_lease_until = NULL
WHERE id = $1 AND token_lease_holder = $2
