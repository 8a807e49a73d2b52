SELECT queue AS "queue!", state AS "state!", count(*) AS "jobs!" FROM jobs_all GROUP BY queue, state
