-- request($1 namespace, $2 key): one accepted request, never lost. The
-- row's lock orders it against every other step of the key; the generation
-- is drawn after the lock is taken, so generations grow along that order.
-- Notifies the namespace's replicas when nobody owns the key.
WITH r AS (
    INSERT INTO coalescer_keys AS k (namespace, key, requested, since)
    SELECT $1, $2, g.v, g.v FROM (SELECT nextval('coalescer_seq') AS v) AS g
    ON CONFLICT (namespace, key) DO UPDATE SET
        (requested, since, after) = (
            SELECT g.v,
                   COALESCE(k.since, g.v),
                   CASE WHEN k.claimed IS NULL THEN NULL ELSE COALESCE(k.after, g.v) END
            FROM (SELECT nextval('coalescer_seq') AS v) AS g)
    RETURNING k.requested, k.since, k.owner IS NOT NULL AS owned
)
SELECT r.requested,
       NOT r.owned AND r.since = r.requested AS started,
       CASE WHEN r.owned THEN false ELSE pg_notify('coalescer', $1) IS NOT NULL END AS notified
FROM r
