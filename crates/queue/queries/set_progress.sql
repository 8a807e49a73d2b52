-- Records progress and tells the handler whether cancellation was asked for.
-- No row: the claim is no longer ours (rescued, or lost with a crash).
-- "Running" and the holder are spelt so that no plan can walk this worker's
-- entries in jobs_running_holder instead of probing the primary key (see
-- complete_succeeded.sql). With a transaction holding vacuum back (that
-- index then keeps every running version since), this statement and its
-- sibling were busy on CPU in most samples while a soak's throughput
-- halved in two minutes; spelt this way they no longer showed.
UPDATE jobs SET progress = $2
WHERE id = $1 AND state NOT IN ('scheduled', 'available', 'retryable')
  AND locked_by IS NOT DISTINCT FROM $3 AND started_at = $4
RETURNING cancel_requested
