-- Bulk upsert keyed on (account_id, provider_transaction_id). A row that did
-- not change is not rewritten; a removed row that comes back is revived.
INSERT INTO transactions (id, account_id, provider_transaction_id, amount, currency, status,
                          transaction_date, posted_date, description, merchant, category,
                          txn_type, txn_subtype, symbol, quantity, price,
                          pending_provider_transaction_id, replaces_transaction_id, raw)
SELECT u.id, u.account_id, u.ptid, u.amount, u.currency, u.status,
       u.transaction_date, u.posted_date, u.description, u.merchant, u.category,
       u.txn_type, u.txn_subtype, u.symbol, u.quantity, u.price,
       u.pending_ptid,
       CASE WHEN u.pending_ptid IS NOT NULL THEN
           (SELECT p.id FROM transactions p
            WHERE p.account_id = u.account_id AND p.provider_transaction_id = u.pending_ptid)
       END,
       u.raw::json
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::text[], $6::text[],
            $7::date[], $8::date[], $9::text[], $10::text[], $11::text[],
            $12::text[], $13::text[], $14::text[], $15::numeric[], $16::numeric[],
            $17::text[], $18::text[])
     AS u(id, account_id, ptid, amount, currency, status,
          transaction_date, posted_date, description, merchant, category,
          txn_type, txn_subtype, symbol, quantity, price, pending_ptid, raw)
ON CONFLICT (account_id, provider_transaction_id) DO UPDATE
SET amount = EXCLUDED.amount,
    currency = EXCLUDED.currency,
    status = EXCLUDED.status,
    transaction_date = EXCLUDED.transaction_date,
    posted_date = EXCLUDED.posted_date,
    description = EXCLUDED.description,
    merchant = EXCLUDED.merchant,
    category = EXCLUDED.category,
    txn_type = EXCLUDED.txn_type,
    txn_subtype = EXCLUDED.txn_subtype,
    symbol = EXCLUDED.symbol,
    quantity = EXCLUDED.quantity,
    price = EXCLUDED.price,
    pending_provider_transaction_id = EXCLUDED.pending_provider_transaction_id,
    replaces_transaction_id = COALESCE(EXCLUDED.replaces_transaction_id,
                                       transactions.replaces_transaction_id),
    raw = EXCLUDED.raw,
    removed_at = NULL,
    updated_at = now()
WHERE transactions.removed_at IS NOT NULL
   OR transactions.raw::text IS DISTINCT FROM EXCLUDED.raw::text
