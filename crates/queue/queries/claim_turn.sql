-- Claims of queue $1 under a per-owner cap take turns: held to commit.
SELECT pg_advisory_xact_lock(hashtextextended('dashtam.claim:' || $1, 0))
