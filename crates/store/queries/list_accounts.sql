SELECT a.id, a.connection_id, a.provider_account_id, a.name, a.official_name, a.mask,
       a.account_type, a.account_subtype, a.balance_current, a.balance_available, a.currency,
       a.created_at, a.updated_at
FROM accounts a
JOIN provider_connections c ON c.id = a.connection_id
WHERE c.user_id = $1 AND ($2::uuid IS NULL OR a.connection_id = $2)
ORDER BY a.created_at, a.id
