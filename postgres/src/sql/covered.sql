-- covered($1 namespace, $2 key, $3 generation): whether a completed cycle
-- covers request $3. A row's uncovered requests run from `since` up, so $3
-- is covered unless the row has `since <= $3` (a row swept since, or made
-- again, holds only later generations).
SELECT NOT EXISTS (
    SELECT 1 FROM coalescer_keys
    WHERE namespace = $1 AND key = $2 AND since IS NOT NULL AND since <= $3
)
