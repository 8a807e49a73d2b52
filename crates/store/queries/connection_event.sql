-- What a provider's webhook changes on a connection ($2):
--   reauth_required: an active connection needs its user to log in again;
--   reauth_warned:   an active connection's access ends soon (warned once);
--   repaired:        a connection that needed the user works again;
-- changes no row when the connection is not in a state the event changes.
UPDATE provider_connections
SET status = CASE $2::text WHEN 'reauth_required' THEN 'reauth_required'
                     WHEN 'repaired' THEN 'active'
                     ELSE status END,
    reauth_warned_at = CASE $2::text WHEN 'reauth_warned' THEN now() ELSE reauth_warned_at END,
    updated_at = now()
WHERE id = $1
  AND CASE $2::text WHEN 'reauth_required' THEN status = 'active'
              WHEN 'reauth_warned' THEN status = 'active' AND reauth_warned_at IS NULL
              WHEN 'repaired' THEN status = 'reauth_required'
              ELSE false END
