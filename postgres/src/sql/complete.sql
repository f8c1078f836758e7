-- complete($1 namespace, $2 key, $3 owner, $4 epoch, $5 lease in seconds,
-- $6 go on): the cycle of epoch $4 covered everything up to
-- its claim. In the same statement, under the row's lock: if requests came
-- meanwhile and $6, the owner goes again at once (a new claim and epoch);
-- if they came and not $6, the key is handed back, pending, and the
-- namespace notified; if none came, the key goes idle. No row: fenced (a
-- takeover drew a later epoch), nothing changed.
WITH u AS (
    UPDATE coalescer_keys AS k SET
        covered = k.claimed,
        since = k.after,
        after = NULL,
        claimed = CASE WHEN $6 AND k.requested > k.claimed THEN k.requested END,
        owner = CASE WHEN $6 AND k.requested > k.claimed THEN k.owner END,
        epoch = CASE WHEN $6 AND k.requested > k.claimed
                     THEN nextval('coalescer_seq') ELSE k.epoch END,
        lease_until = CASE WHEN $6 AND k.requested > k.claimed
                           THEN now() + make_interval(secs => $5::float8) END
    WHERE k.namespace = $1 AND k.key = $2 AND k.owner = $3 AND k.epoch = $4
    RETURNING k.claimed, k.epoch, k.requested > k.covered AS pending, k.owner IS NULL AS unowned
)
SELECT u.claimed, u.epoch, u.pending,
       CASE WHEN u.unowned AND u.pending THEN pg_notify('coalescer', $1) IS NOT NULL
            ELSE false END AS notified
FROM u
