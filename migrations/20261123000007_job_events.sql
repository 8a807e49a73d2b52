-- Live job status (GET /api/v1/jobs/{id}/events): an API process streaming
-- a job's events registers a watcher row; updates of watched jobs NOTIFY
-- `dashtam_job_events` with the job id. Unwatched jobs (nearly all of them)
-- cost one EXISTS on an empty table per UPDATE statement, not per row.
CREATE TABLE job_watchers (
    job_id      uuid        NOT NULL,
    watcher     uuid        NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (job_id, watcher)
);

CREATE FUNCTION jobs_notify_watched() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM job_watchers) THEN
        PERFORM pg_notify('dashtam_job_events', n.id::text)
        FROM new_rows n
        WHERE EXISTS (SELECT 1 FROM job_watchers w WHERE w.job_id = n.id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify_update
    AFTER UPDATE ON jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify_watched();
