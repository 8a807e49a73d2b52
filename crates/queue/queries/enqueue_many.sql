-- Bulk enqueue (no unique keys): one statement, one NOTIFY per queue.
INSERT INTO jobs (id, queue, kind, payload, state, priority, max_attempts, run_at, owner)
SELECT u.id, u.queue, u.kind, u.payload,
       CASE WHEN u.run_at > now() THEN 'scheduled' ELSE 'available' END,
       u.priority, u.max_attempts, GREATEST(u.run_at, now()), u.owner
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::smallint[], $6::int[],
            $7::timestamptz[], $8::text[])
     AS u(id, queue, kind, payload, priority, max_attempts, run_at, owner)
