-- claim($1 namespace, $2 owner, $3 lease in seconds, $4 how many, $5 the
-- keys the claimer is running now): unowned pending keys, and keys whose
-- owner's lease expired (a takeover — of the claimer's own too, unless it
-- is running that key: a claim it lost track of, say a go-again whose reply
-- was lost), oldest uncovered request first. Each claim covers every
-- request so far and draws a new fencing epoch.
WITH c AS (
    SELECT namespace, key, owner AS previous
    FROM coalescer_keys
    WHERE namespace = $1
      AND requested > covered
      AND (owner IS NULL
           OR (lease_until < now() AND NOT (owner = $2 AND key = ANY ($5::text[]))))
    ORDER BY since
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE coalescer_keys AS k SET
    owner = $2,
    claimed = k.requested,
    after = NULL,
    epoch = nextval('coalescer_seq'),
    lease_until = now() + make_interval(secs => $3::float8),
    takeovers = k.takeovers + (c.previous IS NOT NULL)::int
FROM c
WHERE k.namespace = c.namespace AND k.key = c.key
RETURNING k.key, k.claimed, k.epoch, c.previous
