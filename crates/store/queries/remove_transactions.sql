-- Removals are tombstones: the row stays (a posted transaction may link to
-- it) but is marked gone.
UPDATE transactions AS t
SET removed_at = now(), updated_at = now()
FROM unnest($1::uuid[], $2::text[]) AS r(account_id, ptid)
WHERE t.account_id = r.account_id
  AND t.provider_transaction_id = r.ptid
  AND t.removed_at IS NULL
