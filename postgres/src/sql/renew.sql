-- renew($1 namespace, $2 owner, $3 keys, $4 their epochs, $5 lease in seconds):
-- extends the owner's leases, in one statement for all its
-- running cycles. A key not returned is no longer this owner's at that
-- epoch: its cycle is fenced.
UPDATE coalescer_keys AS k SET
    lease_until = now() + make_interval(secs => $5::float8)
FROM unnest($3::text[], $4::int8[]) AS r(key, epoch)
WHERE k.namespace = $1 AND k.key = r.key AND k.epoch = r.epoch AND k.owner = $2
RETURNING k.key
