-- Live job status (GET /api/v1/jobs/{id}/events): an API process streaming
-- a job marks it watched; every later update of a watched job NOTIFYs
-- `dashtam_job_events` with its id. The trigger's WHEN is checked per row
-- without calling any function, so unwatched jobs (nearly all of them) cost
-- the queue's hot path nothing measurable. (A statement-level trigger with a
-- transition table and a watcher table cost about 10 % of drain throughput:
-- docs/benchmarks.md.)
ALTER TABLE jobs ADD COLUMN watched boolean NOT NULL DEFAULT false;

CREATE FUNCTION jobs_notify_watched() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dashtam_job_events', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify_watched
    AFTER UPDATE ON jobs
    FOR EACH ROW WHEN (NEW.watched)
    EXECUTE FUNCTION jobs_notify_watched();
