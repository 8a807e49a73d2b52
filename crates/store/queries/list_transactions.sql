-- Newest first; keyset pagination on (transaction_date, id); optional date
-- range and amount range (inclusive; positive = money in).
SELECT t.id, t.account_id, t.provider_transaction_id, t.amount, t.currency, t.status,
       t.transaction_date, t.posted_date, t.description, t.merchant, t.category,
       t.txn_type, t.txn_subtype, t.symbol, t.quantity, t.price,
       t.replaces_transaction_id, t.removed_at, t.created_at, t.updated_at
FROM transactions t
JOIN accounts a ON a.id = t.account_id
JOIN provider_connections c ON c.id = a.connection_id
WHERE c.user_id = $1
  AND ($2::uuid IS NULL OR t.account_id = $2)
  AND ($3::date IS NULL OR (t.transaction_date, t.id) < ($3, $4::uuid))
  AND ($6::date IS NULL OR t.transaction_date >= $6)
  AND ($7::date IS NULL OR t.transaction_date <= $7)
  AND ($8::numeric IS NULL OR t.amount >= $8)
  AND ($9::numeric IS NULL OR t.amount <= $9)
  AND t.removed_at IS NULL
ORDER BY t.transaction_date DESC, t.id DESC
LIMIT $5
