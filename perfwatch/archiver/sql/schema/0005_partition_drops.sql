-- Retention drops a partition in steps that cannot share one transaction, so that no reader's lock
-- can hold a writer back: in the transaction that decides it, the partition leaves the catalog
-- (perfwatch.partition) and joins this queue; then the archiver detaches it from its level's table
-- (DETACH PARTITION ... CONCURRENTLY: no lock that conflicts with readers or writers, and no
-- transaction block) and drops it, under a lock_timeout, retrying on later passes until it is gone.
CREATE TABLE perfwatch.partition_drop (
    table_name text PRIMARY KEY,
    parent     text NOT NULL,   -- the level's table it is (or was) a partition of
    tier       text NOT NULL,
    lo         timestamptz NOT NULL,
    hi         timestamptz NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT now()
);

-- 0.1's drop_expired dropped in the deciding transaction (DROP TABLE waits for every reader of the
-- level's table, and every writer queued behind it); expire_partitions replaces it.
DROP FUNCTION IF EXISTS perfwatch.drop_expired(text, timestamptz);
