SELECT queue, state, count(*) AS "jobs!" FROM jobs GROUP BY queue, state
