-- abandon($1 namespace, $2 key, $3 owner, $4 epoch): the cycle of epoch $4
-- gives its claim back without completing (its requests stay uncovered);
-- the namespace is notified so another replica runs it. No row: fenced.
WITH u AS (
    UPDATE coalescer_keys AS k SET
        owner = NULL, claimed = NULL, after = NULL, lease_until = NULL
    WHERE k.namespace = $1 AND k.key = $2 AND k.owner = $3 AND k.epoch = $4
    RETURNING k.key
)
SELECT pg_notify('coalescer', $1) IS NOT NULL AS notified FROM u
