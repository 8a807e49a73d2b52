-- Workers are no longer woken by a trigger inside the enqueuing transaction:
-- a NOTIFY there holds Postgres's global notify lock until the commit's WAL
-- flush, so concurrent enqueues committed one at a time. A single enqueue
-- now commits, then asks the client's wake-up task for one NOTIFY per queue
-- (outside any write); the bulk enqueue NOTIFYs in its own statement.
DROP TRIGGER jobs_notify_insert ON jobs;
DROP FUNCTION jobs_notify_inserted();
