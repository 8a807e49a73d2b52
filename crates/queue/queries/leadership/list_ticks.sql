-- Newest first; ($2, $3) is the last (tick, cycle) of the previous page.
SELECT cycle, tick, leader, term, started_at, finished_at, enqueued, flagged
FROM scheduler_ticks
WHERE ($1::text IS NULL OR cycle = $1)
  AND ($2::timestamptz IS NULL OR (tick, cycle) < ($2, $3::text))
ORDER BY tick DESC, cycle DESC
LIMIT $4
