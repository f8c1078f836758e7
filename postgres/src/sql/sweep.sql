-- sweep($1 namespace, $2 key or NULL for every key): removes idle rows
-- (unowned, every request covered). The condition is checked under each
-- row's lock, so a request that got there first keeps its row; one that
-- comes after inserts a fresh one.
DELETE FROM coalescer_keys
WHERE namespace = $1 AND ($2::text IS NULL OR key = $2)
  AND owner IS NULL AND requested = covered
