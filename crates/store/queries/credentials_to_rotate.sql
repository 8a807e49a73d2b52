-- Blobs written under another key than $1 (the key id sits at byte 3, its
-- length at byte 2: see crypto.rs).
SELECT id, credentials
FROM provider_connections
WHERE credentials IS NOT NULL
  AND substring(credentials FROM 3 FOR get_byte(credentials, 1)) <> convert_to($1, 'UTF8')
ORDER BY id
LIMIT $2
FOR NO KEY UPDATE
