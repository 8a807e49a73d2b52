SELECT id, provider_account_id FROM accounts WHERE connection_id = $1
