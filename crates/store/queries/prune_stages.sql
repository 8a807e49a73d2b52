-- Stages of syncs that never finished (their process died): no sync waits
-- a day for its pages.
DELETE FROM sync_staging WHERE created_at < now() - $1 * interval '1 second'
