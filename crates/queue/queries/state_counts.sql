SELECT state, count(*) FROM jobs WHERE $1::text IS NULL OR kind = $1 GROUP BY state
