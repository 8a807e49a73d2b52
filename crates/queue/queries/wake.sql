-- Wakes idle workers: one NOTIFY per queue. A NOTIFY gives its transaction
-- an id, so its commit would wait for a WAL flush (and sit through the
-- disk's occasional ~100 ms stalls); nothing in it needs to survive a
-- crash, so it commits asynchronously.
SELECT pg_notify($1, q.queue)
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS s,
     unnest($2::text[]) AS q(queue)
