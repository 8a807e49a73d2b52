INSERT INTO accounts (id, connection_id, provider_account_id, name, official_name, mask,
                      account_type, account_subtype, balance_current, balance_available, currency)
SELECT u.id, $1, u.provider_account_id, u.name, u.official_name, u.mask,
       u.account_type, u.account_subtype, u.balance_current, u.balance_available, u.currency
FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::numeric[], $10::numeric[], $11::text[])
     AS u(id, provider_account_id, name, official_name, mask, account_type, account_subtype,
          balance_current, balance_available, currency)
ON CONFLICT (connection_id, provider_account_id) DO UPDATE
SET name = EXCLUDED.name,
    official_name = EXCLUDED.official_name,
    mask = EXCLUDED.mask,
    account_type = EXCLUDED.account_type,
    account_subtype = EXCLUDED.account_subtype,
    balance_current = EXCLUDED.balance_current,
    balance_available = EXCLUDED.balance_available,
    currency = EXCLUDED.currency,
    updated_at = now()
WHERE (accounts.name, accounts.official_name, accounts.mask, accounts.account_type,
       accounts.account_subtype, accounts.balance_current, accounts.balance_available,
       accounts.currency)
      IS DISTINCT FROM
      (EXCLUDED.name, EXCLUDED.official_name, EXCLUDED.mask, EXCLUDED.account_type,
       EXCLUDED.account_subtype, EXCLUDED.balance_current, EXCLUDED.balance_available,
       EXCLUDED.currency)
