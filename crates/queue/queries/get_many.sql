-- Jobs by id, for a batch of lookups (ids may repeat; missing ones are absent).
SELECT id AS "id!", queue AS "queue!", kind AS "kind!", payload AS "payload!",
       state AS "state!: JobState", priority AS "priority!", attempt AS "attempt!",
       max_attempts AS "max_attempts!", run_at AS "run_at!", unique_key, owner, throttle_key,
       subject, waiting, locked_by, cancel_requested AS "cancel_requested!", progress,
       errors AS "errors!", created_at AS "created_at!", started_at, finished_at
FROM jobs_all WHERE id = ANY($1)
