-- Operator controls: cancellation of running jobs (observed by the handler
-- at its next checkpoint) and paused queues.

ALTER TABLE jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;

CREATE TABLE queue_pauses (
    queue      text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text NOT NULL
);

-- Pruning walks finished jobs by age.
CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;
