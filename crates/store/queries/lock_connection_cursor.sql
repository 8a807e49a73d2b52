-- Held until the sync commits: a second sync of the same connection waits
-- here, then sees the moved cursor and backs off.
SELECT sync_cursor FROM provider_connections WHERE id = $1 FOR UPDATE
