-- Operator controls: cancellation of running jobs (observed by the handler
-- at its next checkpoint) and paused queues.

ALTER TABLE jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;

CREATE TABLE queue_pauses (
    queue      text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text NOT NULL
);

-- No index for pruning: every completion would pay for it. Pruning walks
-- the primary key instead (ids are UUIDv7, so ordered by creation time, and
-- a job finishes after it is created).
