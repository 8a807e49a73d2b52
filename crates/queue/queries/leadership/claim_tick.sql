-- Inserted with the tick's work; a tick that already has a row (processed,
-- or being processed by a split-brain twin, whose commit we wait for) is
-- skipped.
INSERT INTO scheduler_ticks (cycle, tick, leader, term)
VALUES ($1, $2, $3, $4)
ON CONFLICT (cycle, tick) DO NOTHING
RETURNING true AS "claimed!"
