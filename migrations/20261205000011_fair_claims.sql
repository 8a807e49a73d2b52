-- Fair claims: each claim shares its batch between the owners with due jobs
-- (and the jobs without an owner), then fills what the shares leave in
-- priority, run_at order. See queue_claim below and docs/ARCHITECTURE.md
-- ("Fair claims").

-- The owners with pending jobs at a priority, walked in rotation, and each
-- owner's due jobs in run_at order (jobs without an owner: owner IS NULL).
CREATE INDEX jobs_fair ON jobs (queue, priority, owner, run_at, id)
    WHERE state IN ('scheduled', 'available', 'retryable');

-- The per-owner cap: how many of an owner's jobs run (counted up to the cap).
CREATE INDEX jobs_owner_running ON jobs (queue, owner)
    WHERE state = 'running' AND owner IS NOT NULL;

-- Claims up to p_n due jobs of p_queue for worker p_worker (none while the
-- queue is paused) and returns them, each with the last owner this claim
-- served (`turn`: the worker's next claim starts after it).
--
-- 1. The best priority with a due job (a walk over the priorities that have
--    pending jobs, one index probe each).
-- 2. Owners with pending jobs at that priority, in rotation: after p_turn,
--    then from the start up to p_turn; at most 2 * p_n + 8 visits, at most
--    p_n owners kept. An owner is kept if it has a due job and, with a cap
--    (p_cap > 0), fewer than p_cap jobs running in the queue.
-- 3. Each kept owner, and the jobs without an owner if any is due, is a
--    bucket with an equal share, ceil(p_n / buckets), of the claim; its
--    oldest due jobs up to its share (and its room under the cap) are
--    locked (SKIP LOCKED), then taken round-robin (each bucket's first,
--    then each one's second, ...) up to p_n.
-- 4. A shortfall (buckets with fewer due jobs than their share) is filled
--    in priority, run_at order: from anyone without a cap, only from jobs
--    without an owner with one.
--
-- A procedure rather than one statement: a single statement doing all this
-- cost ~4 ms to plan on every call (a dozen scans of `jobs`, each weighing
-- nine indexes), more than it costs to run. These small statements are
-- planned once per connection: generic plans, forced (the planner kept
-- re-planning them for parameters that never change their plan), and no JIT
-- (a generic plan's pessimistic cost set off 10 ms of compilation). The
-- same idea as graphile-worker's get_job.
CREATE FUNCTION queue_claim(p_queue text, p_n int, p_worker uuid, p_turn text, p_cap int)
RETURNS TABLE (
    id uuid, queue text, kind text, payload jsonb, attempt int, max_attempts int,
    owner text, throttle_key text, run_at timestamptz, started_at timestamptz, turn text
)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
    v_prio smallint;
    v_at text := p_turn;
    v_next text;
    v_wrapped boolean := false;
    v_visits int := 0;
    v_owners text[] := '{}';
    v_rooms int[] := '{}';
    v_room int;
    v_ownerless boolean;
    v_share int;
    v_ids uuid[] := '{}';
    v_got int;
    v_turn text;
BEGIN
    IF p_n <= 0 OR EXISTS (SELECT 1 FROM queue_pauses p WHERE p.queue = p_queue) THEN
        RETURN;
    END IF;

    -- 1. The best priority with a due job.
    SELECT j.priority INTO v_prio FROM jobs j
    WHERE j.queue = p_queue AND j.state IN ('scheduled', 'available', 'retryable')
    ORDER BY j.priority LIMIT 1;
    WHILE v_prio IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM jobs j
        WHERE j.queue = p_queue AND j.priority = v_prio
          AND j.state IN ('scheduled', 'available', 'retryable') AND j.run_at <= now()
    ) LOOP
        SELECT j.priority INTO v_prio FROM jobs j
        WHERE j.queue = p_queue AND j.state IN ('scheduled', 'available', 'retryable')
          AND j.priority > v_prio
        ORDER BY j.priority LIMIT 1;
    END LOOP;
    IF v_prio IS NULL THEN
        RETURN;
    END IF;

    -- 2. Owners in rotation.
    WHILE v_visits < 2 * p_n + 8 AND cardinality(v_owners) < p_n LOOP
        v_next := NULL;
        SELECT j.owner INTO v_next FROM jobs j
        WHERE j.queue = p_queue AND j.priority = v_prio
          AND j.state IN ('scheduled', 'available', 'retryable') AND j.owner > v_at
        ORDER BY j.owner LIMIT 1;
        IF v_next IS NULL OR (v_wrapped AND v_next > p_turn) THEN
            EXIT WHEN v_wrapped OR p_turn = '';
            v_wrapped := true;
            v_at := '';
            CONTINUE;
        END IF;
        v_at := v_next;
        v_visits := v_visits + 1;
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM jobs j
            WHERE j.queue = p_queue AND j.priority = v_prio AND j.owner = v_next
              AND j.state IN ('scheduled', 'available', 'retryable') AND j.run_at <= now()
        );
        IF p_cap > 0 THEN
            SELECT p_cap - count(*) INTO v_room FROM (
                SELECT 1 FROM jobs r
                WHERE r.queue = p_queue AND r.owner = v_next AND r.state = 'running'
                LIMIT p_cap
            ) running;
        ELSE
            v_room := p_n;
        END IF;
        IF v_room > 0 THEN
            v_owners := v_owners || v_next;
            v_rooms := v_rooms || v_room;
        END IF;
    END LOOP;
    v_turn := v_owners[cardinality(v_owners)];

    -- 3. Equal shares, taken round-robin.
    v_ownerless := EXISTS (
        SELECT 1 FROM jobs j
        WHERE j.queue = p_queue AND j.priority = v_prio AND j.owner IS NULL
          AND j.state IN ('scheduled', 'available', 'retryable') AND j.run_at <= now()
    );
    IF cardinality(v_owners) > 0 OR v_ownerless THEN
        v_share := ceil(p_n::numeric / (cardinality(v_owners) + v_ownerless::int));
        WITH picked AS (
            SELECT b.ord, d.id, d.run_at
            FROM unnest(v_owners, v_rooms) WITH ORDINALITY AS b(owner, room, ord),
            LATERAL (
                SELECT j.id, j.run_at FROM jobs j
                WHERE j.queue = p_queue AND j.priority = v_prio AND j.owner = b.owner
                  AND j.state IN ('scheduled', 'available', 'retryable') AND j.run_at <= now()
                ORDER BY j.run_at, j.id
                LIMIT least(v_share, b.room)
                FOR UPDATE SKIP LOCKED
            ) d
            UNION ALL
            SELECT 0, d.id, d.run_at
            FROM (
                SELECT j.id, j.run_at FROM jobs j
                WHERE v_ownerless AND j.queue = p_queue AND j.priority = v_prio
                  AND j.owner IS NULL
                  AND j.state IN ('scheduled', 'available', 'retryable') AND j.run_at <= now()
                ORDER BY j.run_at, j.id
                LIMIT v_share
                FOR UPDATE SKIP LOCKED
            ) d
        )
        SELECT coalesce(array_agg(r.id ORDER BY r.rn, r.ord), '{}') INTO v_ids FROM (
            SELECT ranked.id, ranked.ord, ranked.rn FROM (
                SELECT p.id, p.ord,
                       row_number() OVER (PARTITION BY p.ord ORDER BY p.run_at, p.id) AS rn
                FROM picked p
            ) ranked
            ORDER BY ranked.rn, ranked.ord
            LIMIT p_n
        ) r;
    END IF;

    -- 4. The shortfall, in priority, run_at order (a walk over the
    -- priorities, so `run_at <= now()` bounds each index scan).
    v_got := cardinality(v_ids);
    IF v_got < p_n THEN
        v_ids := v_ids || ARRAY(
            WITH RECURSIVE prio AS (
                (SELECT j.priority FROM jobs j
                 WHERE j.queue = p_queue AND j.state IN ('scheduled', 'available', 'retryable')
                 ORDER BY j.priority LIMIT 1)
                UNION ALL
                SELECT (SELECT j.priority FROM jobs j
                        WHERE j.queue = p_queue
                          AND j.state IN ('scheduled', 'available', 'retryable')
                          AND j.priority > prio.priority
                        ORDER BY j.priority LIMIT 1)
                FROM prio WHERE prio.priority IS NOT NULL
            )
            SELECT due.id
            FROM prio, LATERAL (
                SELECT j.id, j.run_at FROM jobs j
                WHERE j.queue = p_queue AND j.priority = prio.priority
                  AND j.state IN ('scheduled', 'available', 'retryable')
                  AND j.run_at <= now()
                  AND (p_cap <= 0 OR j.owner IS NULL)
                  AND j.id <> ALL (v_ids)
                ORDER BY j.run_at, j.id
                LIMIT p_n - v_got
                FOR UPDATE SKIP LOCKED
            ) AS due
            WHERE prio.priority IS NOT NULL
            ORDER BY prio.priority, due.run_at, due.id
            LIMIT p_n - v_got
        );
    END IF;

    RETURN QUERY
    UPDATE jobs AS j
    SET state = 'running', attempt = j.attempt + 1, locked_by = p_worker,
        started_at = now(), waiting = NULL
    WHERE j.id = ANY (v_ids)
    RETURNING j.id, j.queue, j.kind, j.payload, j.attempt, j.max_attempts, j.owner,
              j.throttle_key, j.run_at, j.started_at, v_turn;
END
$$;
