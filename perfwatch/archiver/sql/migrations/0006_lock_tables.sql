-- The archive's locks are table locks on tables of its own, no longer advisory locks. This comment
-- supersedes the one on locks at the top of 0003.
--
-- 0003 serialised the archive with transaction-level advisory locks (class 1885696614). Every
-- role that can connect to the database can take any advisory lock, whatever its privileges: the
-- read-only perfwatch_grafana, in a read-only session, could hold the raw-write lock
-- (SELECT pg_advisory_lock(1885696614, 3)) for as long as it liked, and every write, rollup and
-- retention pass waited behind it while the spool grew until it dropped data. LOCK TABLE needs
-- privileges on the table (SELECT for ACCESS SHARE; UPDATE, DELETE or TRUNCATE for the stronger
-- modes), and nobody but the writer (their owner) and superusers has any on these tables.
--
-- Locks (empty tables, locked until the end of the transaction):
--   perfwatch.lock_rollup     EXCLUSIVE: rollup and retention, one at a time, so watermarks, dirty
--                             ranges and drops agree
--   perfwatch.lock_raw_write  SHARE for every store write (writes do not wait for each other),
--                             EXCLUSIVE for the first tier's rollup and raw retention, so a sample is
--                             either seen by a rollup or known to be late
--   perfwatch.lock_partition  EXCLUSIVE: partition and tier creation
-- Taken in that order (rollup, raw write, partition) by whoever takes more than one.
-- SHARE conflicts with EXCLUSIVE, EXCLUSIVE with both; ACCESS SHARE (a plain SELECT, pg_dump)
-- conflicts with neither, so not even a role given SELECT on them could hold the archive back.
--
-- The functions that take them are redefined below, unchanged otherwise. ensure_partition,
-- create_tier and drop_expired are SECURITY DEFINER (they run as the writer whoever calls them);
-- begin_write and lock_for_rollup run as their caller, whom EXECUTE restricts to the writer (0001
-- revokes it from PUBLIC) and superusers: the owner's own privileges are all either needs.

CREATE TABLE perfwatch.lock_rollup ();
CREATE TABLE perfwatch.lock_raw_write ();
CREATE TABLE perfwatch.lock_partition ();
COMMENT ON TABLE perfwatch.lock_rollup IS 'a lock, never holds rows: rollup and retention (see migration 0006)';
COMMENT ON TABLE perfwatch.lock_raw_write IS 'a lock, never holds rows: raw writes (see migration 0006)';
COMMENT ON TABLE perfwatch.lock_partition IS 'a lock, never holds rows: partition creation (see migration 0006)';
-- 0001's default privileges just granted Grafana SELECT on them, which is what ACCESS SHARE needs.
-- It conflicts with nothing taken here, but Grafana has no business with the archive's locks at all.
REVOKE ALL ON perfwatch.lock_rollup, perfwatch.lock_raw_write, perfwatch.lock_partition
    FROM perfwatch_grafana, PUBLIC;

CREATE OR REPLACE FUNCTION perfwatch.ensure_partition(p_tier text, p_at timestamptz) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    t perfwatch.tier;
    p_lo timestamptz;
    p_name text;
BEGIN
    SELECT * INTO t FROM perfwatch.tier WHERE name = p_tier;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown tier %', p_tier;
    END IF;
    p_lo := perfwatch.bucket_floor(t.partition_width, p_at);
    SELECT table_name INTO p_name FROM perfwatch.partition WHERE tier = p_tier AND lo = p_lo;
    IF FOUND THEN
        RETURN p_name;
    END IF;
    IF p_lo < t.horizon THEN
        -- Recreating it would bring back a period retention already dropped, without its neighbours.
        RAISE EXCEPTION 'tier % has dropped everything before %; no partition for % is created', p_tier, t.horizon, p_at;
    END IF;
    LOCK TABLE perfwatch.lock_partition IN EXCLUSIVE MODE;
    SELECT table_name INTO p_name FROM perfwatch.partition WHERE tier = p_tier AND lo = p_lo;
    IF FOUND THEN
        RETURN p_name;
    END IF;
    p_name := t.table_name || '_' || to_char(p_lo AT TIME ZONE 'UTC',
        CASE WHEN p_lo = date_trunc('day', p_lo, 'UTC') THEN 'YYYYMMDD' ELSE 'YYYYMMDD"_"HH24MISS' END);
    EXECUTE format('CREATE TABLE perfwatch.%I PARTITION OF perfwatch.%I FOR VALUES FROM (%L) TO (%L)',
                   p_name, t.table_name, p_lo, p_lo + t.partition_width);
    INSERT INTO perfwatch.partition (tier, lo, hi, table_name) VALUES (p_tier, p_lo, p_lo + t.partition_width, p_name);
    RETURN p_name;
END
$$;

CREATE OR REPLACE FUNCTION perfwatch.create_tier(p_resolution interval) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    t_name text := perfwatch.duration_label(p_resolution);
    t_table text := 'rollup_' || t_name;
BEGIN
    LOCK TABLE perfwatch.lock_partition IN EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM perfwatch.tier WHERE name = t_name) THEN
        RETURN t_name;
    END IF;
    EXECUTE format($f$
        CREATE TABLE perfwatch.%1$I (
            series_id   integer NOT NULL,
            count       integer NOT NULL,
            bucket      timestamptz NOT NULL,
            sum         double precision NOT NULL,
            min         double precision NOT NULL,
            max         double precision NOT NULL,
            first_ts    timestamptz NOT NULL,
            first_value double precision NOT NULL,
            last_ts     timestamptz NOT NULL,
            last_value  double precision NOT NULL,
            increase    double precision,   -- counters only
            resets      integer,            -- counters only
            PRIMARY KEY (series_id, bucket)
        ) PARTITION BY RANGE (bucket)$f$, t_table);
    EXECUTE format('CREATE INDEX %I ON perfwatch.%I USING brin (bucket)', t_table || '_bucket_brin', t_table);
    INSERT INTO perfwatch.tier (name, resolution, table_name, partition_width)
        VALUES (t_name, p_resolution, t_table, p_resolution * 288);
    RETURN t_name;
END
$$;

CREATE OR REPLACE FUNCTION perfwatch.begin_write(OUT refuse_before timestamptz, OUT first_tier text,
                                                 OUT first_watermark timestamptz)
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
END
$$;

CREATE OR REPLACE FUNCTION perfwatch.lock_for_rollup(p_level integer) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE perfwatch.lock_rollup IN EXCLUSIVE MODE;
    IF p_level = 1 THEN
        LOCK TABLE perfwatch.lock_raw_write IN EXCLUSIVE MODE;
    END IF;
END
$$;

-- As redefined by 0005.
CREATE OR REPLACE FUNCTION perfwatch.drop_expired(p_tier text, p_now timestamptz)
    RETURNS TABLE (partition text, lo timestamptz, hi timestamptz, dropped boolean)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    pol perfwatch.archive_policy;
    nxt perfwatch.tier;
    has_next boolean;
    p perfwatch.partition;
    blocked boolean := false;
BEGIN
    SELECT * INTO pol FROM perfwatch.archive_policy ap WHERE ap.tier = p_tier;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tier % is not in the active policy', p_tier;
    END IF;
    LOCK TABLE perfwatch.lock_rollup IN EXCLUSIVE MODE;
    IF pol.level = 0 THEN
        LOCK TABLE perfwatch.lock_raw_write IN EXCLUSIVE MODE;
    END IF;
    SELECT s.* INTO nxt FROM perfwatch.archive_policy above JOIN perfwatch.tier s ON s.name = above.tier
        WHERE above.level = pol.level + 1;
    has_next := FOUND;
    FOR p IN SELECT * FROM perfwatch.partition pp WHERE pp.tier = p_tier AND pp.hi <= p_now - pol.retention
             ORDER BY pp.lo LOOP
        blocked := blocked OR (has_next AND (nxt.watermark IS NULL OR p.hi > nxt.watermark
                     OR EXISTS (SELECT FROM perfwatch.rollup_dirty d
                                WHERE d.tier IN (nxt.name, p_tier) AND d.lo < p.hi)));
        partition := p.table_name;
        lo := p.lo;
        hi := p.hi;
        dropped := NOT blocked;
        IF dropped THEN
            EXECUTE format('DROP TABLE perfwatch.%I', p.table_name);
            DELETE FROM perfwatch.partition pp WHERE pp.tier = p_tier AND pp.lo = p.lo;
            UPDATE perfwatch.tier SET horizon = greatest(horizon, p.hi) WHERE name = p_tier;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
