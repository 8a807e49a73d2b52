SELECT state AS "state: JobState", count(*) AS "jobs!" FROM jobs WHERE $1::text IS NULL OR kind = $1 GROUP BY state
