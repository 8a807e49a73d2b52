SELECT state AS "state!: JobState", count(*) AS "jobs!" FROM jobs_all WHERE $1::text IS NULL OR kind = $1 GROUP BY state
