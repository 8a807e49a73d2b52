-- Pages of a sync in progress, staged as they arrive so a large first sync
-- holds neither its whole history in memory nor a transaction open across
-- provider calls. Each row is one chunk (a few thousand rows, serialized);
-- the sync's final transaction replays the chunks in order into the real
-- tables and deletes them. UNLOGGED: no WAL, and a crash empties it (the
-- sync then notices missing chunks and runs again).
CREATE UNLOGGED TABLE sync_staging (
    stage_id    uuid        NOT NULL,
    chunk       integer     NOT NULL,
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage_id, chunk)
);
-- Chunks are read once, soon: compressing them (pglz) costs more CPU than
-- the disk it saves.
ALTER TABLE sync_staging ALTER COLUMN body SET STORAGE EXTERNAL;
