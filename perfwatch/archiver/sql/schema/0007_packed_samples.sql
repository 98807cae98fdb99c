-- Storage v2: raw samples land in a small head (perfwatch.sample, a row per sample, so writes stay
-- a COPY) and are packed, one closed window of a series at a time, into a row of arrays that
-- PostgreSQL compresses (sql/functions/compact.sql). A row per sample costs ~90 bytes (heap and
-- primary key); a packed window a few bytes per sample.
--
-- The compaction's state is a level of its own in perfwatch.tier, 'packed': its resolution is the
-- window one chunk packs, its watermark the end of what is packed. Readers take samples before the
-- watermark from the chunks (and perfwatch.sample_late), from it on from the head; a head
-- partition wholly before it is dropped. Raw retention treats 'packed' partitions as raw ones.

-- One window of one series. Sample i (from 1) is at start + (t0 + step * (i - 1) + jitter[i]) ms:
-- scrapes are nearly regular, so jitter holds small numbers that compress to almost nothing,
-- and reading needs no running sum. Values are stored as they are (exact).
CREATE TABLE perfwatch.sample_chunk (
    series_id integer NOT NULL,
    start     timestamptz NOT NULL,       -- the window's start, on the 'packed' tier's grid
    samples   integer NOT NULL,           -- cardinality of jitter and vals
    t0        integer NOT NULL,           -- ms from start to the first sample
    step      integer NOT NULL,           -- ms, the mean interval rounded (0 for one sample)
    jitter    integer[] NOT NULL,
    vals      double precision[] NOT NULL,
    PRIMARY KEY (series_id, start)
) PARTITION BY RANGE (start);
-- MAIN: compressed in line (TOAST compresses a row once it passes the partition's
-- toast_tuple_target, set low by ensure_partition), not moved to a TOAST table of its own with
-- its index.
ALTER TABLE perfwatch.sample_chunk ALTER COLUMN jitter SET STORAGE MAIN, ALTER COLUMN vals SET STORAGE MAIN;
DO $$
BEGIN
    -- lz4 where the server was built with it (pglz otherwise): faster to compress and to read.
    ALTER TABLE perfwatch.sample_chunk ALTER COLUMN jitter SET COMPRESSION lz4, ALTER COLUMN vals SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;

-- Samples that arrived for a window already packed (a replayed spool, an import): kept here, in
-- rows, until the compaction merges them into their chunks. Readers see them meanwhile.
CREATE TABLE perfwatch.sample_late (
    series_id integer NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (series_id, ts)
);
CREATE INDEX sample_late_ts ON perfwatch.sample_late (ts);

INSERT INTO perfwatch.tier (name, resolution, table_name, partition_width)
    VALUES ('packed', '1 hour', 'sample_chunk', '1 day');

-- begin_write also returns the packed watermark now (its OUT parameters change).
DROP FUNCTION IF EXISTS perfwatch.begin_write();

-- Untyped series (no TYPE line, 47 of node_exporter's families) get counter maths as PromQL's
-- rate() does; only a series declared a gauge (or info, stateset) is a gauge.
ALTER TABLE perfwatch.metric DROP CONSTRAINT metric_kind_check;
ALTER TABLE perfwatch.metric ADD CONSTRAINT metric_kind_check CHECK (kind IN ('counter', 'gauge', 'untyped'));
UPDATE perfwatch.metric SET kind = 'untyped' WHERE kind = 'gauge' AND family_type IN ('unknown', 'untyped');
-- What the first tier rolled up for them holds no increase: roll again what raw still has.
INSERT INTO perfwatch.rollup_dirty (tier, lo, hi)
    SELECT p.tier, min(pa.lo), t.watermark
    FROM perfwatch.archive_policy p
    JOIN perfwatch.tier t ON t.name = p.tier
    JOIN perfwatch.partition pa ON pa.tier = 'raw'
    WHERE p.level = 1 AND t.watermark IS NOT NULL
      AND EXISTS (SELECT FROM perfwatch.metric WHERE kind = 'untyped')
    GROUP BY p.tier, t.watermark
    HAVING min(pa.lo) < t.watermark;
