-- Jobs by id, for a batch of lookups (ids may repeat; missing ones are absent).
SELECT * FROM jobs WHERE id = ANY($1)
