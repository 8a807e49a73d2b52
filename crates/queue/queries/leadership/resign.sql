-- Step down at shutdown so another daemon takes over at once.
DELETE FROM scheduler_leases WHERE name = $1 AND holder = $2
