-- coalescer-postgres schema, version 1. One row per (namespace, key) while
-- the key is active; generations and fencing epochs come from one sequence,
-- so both only ever grow and are never reused.
CREATE SEQUENCE coalescer_seq;

CREATE TABLE coalescer_keys (
    namespace   text        NOT NULL,
    key         text        NOT NULL,
    -- the generation of the latest accepted request
    requested   bigint      NOT NULL,
    -- the latest generation a completed cycle covered (0: none yet)
    covered     bigint      NOT NULL DEFAULT 0,
    -- the earliest request no completed cycle covers (NULL: none)
    since       bigint,
    -- the earliest request the running cycle does not cover (NULL: none)
    after       bigint,
    -- the generation the running cycle covers (NULL: none running)
    claimed     bigint,
    -- the replica running it, and until when its lease holds
    owner       text,
    lease_until timestamptz,
    -- the fencing epoch of the current (or last) claim (0: never claimed)
    epoch       bigint      NOT NULL DEFAULT 0,
    -- claims that took the key from an owner whose lease had expired
    takeovers   bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, key),
    CHECK (covered <= requested),
    CHECK ((owner IS NULL) = (claimed IS NULL)),
    CHECK ((owner IS NULL) = (lease_until IS NULL)),
    CHECK (claimed IS NULL OR (claimed > covered AND claimed <= requested)),
    CHECK ((since IS NULL) = (requested = covered)),
    CHECK (after IS NULL OR (claimed IS NOT NULL AND after > claimed))
);

-- Claims look for unowned pending keys, oldest request first ...
CREATE INDEX coalescer_keys_due ON coalescer_keys (namespace, since)
    WHERE owner IS NULL AND requested > covered;
-- ... and for owned keys whose lease has expired.
CREATE INDEX coalescer_keys_leases ON coalescer_keys (namespace, lease_until)
    WHERE owner IS NOT NULL;
