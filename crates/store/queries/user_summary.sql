SELECT
    (SELECT count(*) FROM provider_connections c WHERE c.user_id = $1) AS "connections!",
    (SELECT count(*) FROM accounts a JOIN provider_connections c ON c.id = a.connection_id
      WHERE c.user_id = $1) AS "accounts!",
    (SELECT count(*) FROM transactions t JOIN accounts a ON a.id = t.account_id
      JOIN provider_connections c ON c.id = a.connection_id
      WHERE c.user_id = $1 AND t.removed_at IS NULL) AS "transactions!",
    (SELECT count(*) FROM transactions t JOIN accounts a ON a.id = t.account_id
      JOIN provider_connections c ON c.id = a.connection_id
      WHERE c.user_id = $1 AND t.removed_at IS NOT NULL) AS "removed_transactions!",
    (SELECT count(*) FROM audit_records r
      WHERE r.resource_type = 'connection'
        AND r.resource_id IN (SELECT c.id::text FROM provider_connections c WHERE c.user_id = $1))
        AS "audit_records!"
