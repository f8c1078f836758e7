-- fence($1 namespace, $2 key, $3 owner, $4 epoch), inside the caller's
-- transaction: whether epoch $4 still owns the key. The KEY SHARE lock it
-- takes keeps a takeover's claim (FOR UPDATE) off the row until that
-- transaction ends, so effects it commits were committed by the owner.
SELECT 1 FROM coalescer_keys
WHERE namespace = $1 AND key = $2 AND owner = $3 AND epoch = $4
FOR KEY SHARE
