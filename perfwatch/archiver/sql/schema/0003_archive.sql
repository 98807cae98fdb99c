-- Samples, tier tables' catalog, partitions, the policy mirror, late-sample ranges and the
-- archive's lock tables. The functions that work on them live in sql/functions/ (one file per
-- topic, re-applied at every migrate); the locks are described in sql/functions/locks.sql.
--
-- Levels: raw (0) and the policy's tiers (1, 2, ...; fine to coarse). Tier k is rolled up from
-- level k-1 into buckets that start on multiples of its resolution counted from the Unix epoch.
-- Every level is range-partitioned by time; retention drops whole partitions.

-- Raw samples. The primary key makes a replayed batch idempotent (ON CONFLICT DO NOTHING); the
-- BRIN index (a few pages per partition) lets rollups read one time range of a partition.
-- No foreign key to series: it would cost a lookup per row on the hot path.
CREATE TABLE perfwatch.sample (
    series_id integer NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (series_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX sample_ts_brin ON perfwatch.sample USING brin (ts);

-- Each level's table and state. The state belongs to the table, not to a policy level, so it
-- survives a policy change.
CREATE TABLE perfwatch.tier (
    name            text PRIMARY KEY,           -- 'raw', '5m', '1h'
    resolution      interval NOT NULL,          -- 0 for raw
    table_name      text NOT NULL UNIQUE,
    partition_width interval NOT NULL,          -- fixed when the table is created
    -- every bucket that ends at or before the watermark is rolled up (NULL: nothing yet)
    watermark       timestamptz,
    -- retention dropped everything before this (NULL: nothing dropped)
    horizon         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO perfwatch.tier (name, resolution, table_name, partition_width) VALUES ('raw', '0', 'sample', '1 day');

CREATE TABLE perfwatch.partition (
    tier       text NOT NULL REFERENCES perfwatch.tier (name),
    lo         timestamptz NOT NULL,
    hi         timestamptz NOT NULL,
    table_name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tier, lo)
);

-- The active policy, mirrored from the archiver's config so Grafana and operators can see it,
-- with the last rollup and retention runs of each level.
CREATE TABLE perfwatch.archive_policy (
    tier                   text PRIMARY KEY REFERENCES perfwatch.tier (name),
    level                  integer NOT NULL UNIQUE,  -- 0 raw, 1.. tiers fine to coarse
    resolution             interval NOT NULL,
    retention              interval NOT NULL,
    last_rollup_at         timestamptz,
    last_rollup_seconds    double precision,
    last_rollup_rows       bigint,
    last_retention_at      timestamptz,
    last_retention_seconds double precision,
    last_retention_dropped integer,
    last_retention_waiting integer,   -- expired partitions kept because the next tier has not passed them
    updated_at             timestamptz NOT NULL DEFAULT now()  -- last mirrored
);

-- Time ranges a tier must roll up again: samples that arrived after their bucket was rolled up
-- (a replayed spool), and buckets of the tier below that changed because of them. The range
-- [lo, hi] is inclusive; the rollup widens it to whole buckets.
CREATE TABLE perfwatch.rollup_dirty (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tier     text NOT NULL REFERENCES perfwatch.tier (name),
    lo       timestamptz NOT NULL,
    hi       timestamptz NOT NULL,
    noted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollup_dirty_tier ON perfwatch.rollup_dirty (tier, lo);

-- Empty tables that serve as the archive's locks (sql/functions/locks.sql says who takes which).
-- Table locks rather than advisory locks: any role that can connect can take any advisory lock,
-- while locking these in a mode that conflicts with the archive's takes privileges only their
-- owner (the writer) and superusers have.
CREATE TABLE perfwatch.lock_rollup ();
CREATE TABLE perfwatch.lock_raw_write ();
CREATE TABLE perfwatch.lock_partition ();
COMMENT ON TABLE perfwatch.lock_rollup IS 'a lock, never holds rows: rollup and retention (sql/functions/locks.sql)';
COMMENT ON TABLE perfwatch.lock_raw_write IS 'a lock, never holds rows: raw writes (sql/functions/locks.sql)';
COMMENT ON TABLE perfwatch.lock_partition IS 'a lock, never holds rows: partition creation (sql/functions/locks.sql)';
-- 0001's default privileges just granted Grafana SELECT on them; Grafana has no business with them.
REVOKE ALL ON perfwatch.lock_rollup, perfwatch.lock_raw_write, perfwatch.lock_partition
    FROM perfwatch_grafana, PUBLIC;
