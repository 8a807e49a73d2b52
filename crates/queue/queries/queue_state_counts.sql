SELECT queue, state, count(*) FROM jobs GROUP BY queue, state
