-- The archive's locks: table locks on empty tables of its own (schema 0003), held until the end
-- of the transaction that takes them.
--
--   perfwatch.lock_rollup     EXCLUSIVE: rollup and retention, one at a time, so watermarks, dirty
--                             ranges and drops agree
--   perfwatch.lock_raw_write  SHARE for every store write (writes do not wait for each other),
--                             EXCLUSIVE for the first tier's rollup, the compaction and raw
--                             retention, so a sample is either seen by a rollup (or packed) or known
--                             to be late
--   perfwatch.lock_partition  EXCLUSIVE: partition and tier creation
--
-- Taken in that order (rollup, raw write, partition) by whoever takes more than one. SHARE
-- conflicts with EXCLUSIVE, EXCLUSIVE with both; ACCESS SHARE (a plain SELECT, pg_dump) conflicts
-- with neither. Not advisory locks: any role that can connect (the read-only Grafana role too)
-- can take any advisory lock and so could hold every write back; locking these tables in a mode
-- that conflicts with the archive's needs privileges only the writer (their owner) and superusers
-- have. begin_write and begin_rollup run as their caller, whom EXECUTE restricts to the writer
-- (0001 revokes it from PUBLIC) and superusers.

-- Taken by every store write, before it reads where the first tier's rollup and the compaction
-- are. Returns the time before which samples are refused (retention dropped that period; storing
-- it again would leave raw and the first tier disagreeing), the first tier and its watermark, and
-- the packed watermark with the window of a chunk (samples before it go to sample_late).
CREATE OR REPLACE FUNCTION perfwatch.begin_write(OUT refuse_before timestamptz, OUT first_tier text,
                                                 OUT first_watermark timestamptz, OUT packed_before timestamptz,
                                                 OUT packed_width interval)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    raw_horizon timestamptz;
    resolution interval;
BEGIN
    LOCK TABLE perfwatch.lock_raw_write IN SHARE MODE;
    SELECT horizon INTO raw_horizon FROM perfwatch.tier WHERE name = 'raw';
    SELECT t.name, t.watermark, t.resolution INTO first_tier, first_watermark, resolution
        FROM perfwatch.archive_policy p JOIN perfwatch.tier t ON t.name = p.tier WHERE p.level = 1;
    refuse_before := perfwatch.bucket_ceil(coalesce(resolution, '1 second'), raw_horizon);  -- NULL: refuse nothing
    SELECT t.watermark, t.resolution INTO packed_before, packed_width FROM perfwatch.tier t WHERE t.name = 'packed';
END
$$;

-- Taken by each step of p_tier's rollup (rollup.sql): p_tier must be a rollup tier of the active
-- policy; takes the rollup's locks and returns, as they are under them, the tier's state and that
-- of the levels below (its source) and above it (NULL for the last tier).
CREATE OR REPLACE FUNCTION perfwatch.begin_rollup(p_tier text, OUT t perfwatch.tier, OUT src perfwatch.tier,
                                                  OUT nxt perfwatch.tier)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    lvl integer;
BEGIN
    SELECT level INTO lvl FROM perfwatch.archive_policy WHERE tier = p_tier;
    IF lvl IS NULL OR lvl < 1 THEN
        RAISE EXCEPTION 'tier % is not a rollup tier of the active policy', p_tier;
    END IF;
    LOCK TABLE perfwatch.lock_rollup IN EXCLUSIVE MODE;
    IF lvl = 1 THEN
        LOCK TABLE perfwatch.lock_raw_write IN EXCLUSIVE MODE;
    END IF;
    SELECT * INTO t FROM perfwatch.tier WHERE name = p_tier;
    SELECT s.* INTO src FROM perfwatch.archive_policy p JOIN perfwatch.tier s ON s.name = p.tier
        WHERE p.level = lvl - 1;
    SELECT s.* INTO nxt FROM perfwatch.archive_policy p JOIN perfwatch.tier s ON s.name = p.tier
        WHERE p.level = lvl + 1;
END
$$;

-- Raise unless backend p_holder holds every lock table of p_locks in EXCLUSIVE mode: the pieces of
-- a parallel rollup or compaction run on connections of their own while the transaction that
-- took the locks waits for them (rollup.py, compact.py), and must never run without it.
CREATE OR REPLACE FUNCTION perfwatch.assert_locks_held(p_locks text[], p_holder integer, p_what text) RETURNS void
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    lock_table text;
BEGIN
    FOREACH lock_table IN ARRAY p_locks LOOP
        IF NOT EXISTS (SELECT FROM pg_locks l
                       WHERE l.pid = p_holder AND l.granted AND l.mode = 'ExclusiveLock' AND l.locktype = 'relation'
                         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                         AND l.relation = format('perfwatch.%I', lock_table)::regclass) THEN
            RAISE EXCEPTION 'a piece of the % runs only while backend % holds perfwatch.% (it does not)',
                p_what, p_holder, lock_table;
        END IF;
    END LOOP;
END
$$;
