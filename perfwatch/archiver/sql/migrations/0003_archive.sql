-- Samples, rollup tiers, partitions, watermarks and the policy mirror.
--
-- Levels: raw (0) and the policy's tiers (1, 2, ...; fine to coarse). Tier k is rolled up from
-- level k-1 into buckets that start on multiples of its resolution counted from the Unix epoch.
-- Every level is range-partitioned by time; retention drops whole partitions.
--
-- Locks (transaction-level advisory locks, class 1885696614 = 'perf'):
--   (class, 2) rollup and retention: one at a time, so watermarks, dirty ranges and drops agree
--   (class, 3) raw writes: shared by every store write, exclusive for the first tier's rollup and
--              raw retention, so a sample is either seen by a rollup or known to be late
--   (class, 4) partition creation
-- Taken in that order (2, 3, 4) by whoever takes more than one.

-- Buckets start on multiples of their width counted from the epoch (what Grafana's $__timeGroup gives).
CREATE FUNCTION perfwatch.bucket_floor(width interval, t timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN isfinite(t) THEN date_bin(width, t, timestamptz '1970-01-01 00:00:00+00') ELSE t END;

CREATE FUNCTION perfwatch.bucket_ceil(width interval, t timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN perfwatch.bucket_floor(width, t) = t THEN t ELSE perfwatch.bucket_floor(width, t) + width END;

-- Prometheus' increase between two consecutive samples of a counter: a drop is a reset to zero, so
-- the increase across it is the new value.
CREATE FUNCTION perfwatch.counter_delta(prev double precision, cur double precision) RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN prev IS NULL THEN 0 WHEN cur >= prev THEN cur - prev ELSE cur END;

-- 300 s -> '5m', 3600 s -> '1h', 5400 s -> '1h30m' (as the archiver's config writes durations).
CREATE FUNCTION perfwatch.duration_label(d interval) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    rest bigint := extract(epoch FROM d)::bigint;
    unit record;
    label text := '';
BEGIN
    IF rest <= 0 OR extract(epoch FROM d) <> rest THEN
        RAISE EXCEPTION 'a tier resolution must be a positive whole number of seconds, not %', d;
    END IF;
    FOR unit IN SELECT * FROM (VALUES (31536000, 'y'), (604800, 'w'), (86400, 'd'), (3600, 'h'), (60, 'm'), (1, 's'))
                AS u(seconds, suffix) LOOP
        IF rest >= unit.seconds THEN
            label := label || (rest / unit.seconds) || unit.suffix;
            rest := rest % unit.seconds;
        END IF;
    END LOOP;
    RETURN label;
END
$$;

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

-- The partition of `p_tier` holding time `p_at`, created if missing. SECURITY DEFINER so that the
-- writer owns every partition whoever asks (a superuser DSN included) and can drop it later.
CREATE FUNCTION perfwatch.ensure_partition(p_tier text, p_at timestamptz) RETURNS text
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
    PERFORM pg_advisory_xact_lock(1885696614, 4);
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

-- A rollup tier's table (one per resolution; the name follows it: rollup_5m). Buckets keep what
-- makes every later query exact (Thanos' aggregates): count, sum, min, max (avg = sum/count at
-- every tier), first/last sample time and value, and for counters the reset-corrected increase
-- between consecutive samples inside the bucket and the number of resets there. Increases across a
-- bucket boundary are recovered from last_value and the next bucket's first_value.
-- A partition holds 288 buckets (5m: a day, 1h: 12 days).
CREATE FUNCTION perfwatch.create_tier(p_resolution interval) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    t_name text := perfwatch.duration_label(p_resolution);
    t_table text := 'rollup_' || t_name;
BEGIN
    PERFORM pg_advisory_xact_lock(1885696614, 4);
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

-- Taken by every store write, before it reads where the first tier's rollup is. Returns the time
-- before which samples are refused (retention dropped that period; storing it again would leave
-- raw and the first tier disagreeing), the first tier and its watermark.
CREATE FUNCTION perfwatch.begin_write(OUT refuse_before timestamptz, OUT first_tier text, OUT first_watermark timestamptz)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    raw_horizon timestamptz;
    resolution interval;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1885696614, 3);
    SELECT horizon INTO raw_horizon FROM perfwatch.tier WHERE name = 'raw';
    SELECT t.name, t.watermark, t.resolution INTO first_tier, first_watermark, resolution
        FROM perfwatch.archive_policy p JOIN perfwatch.tier t ON t.name = p.tier WHERE p.level = 1;
    refuse_before := perfwatch.bucket_ceil(coalesce(resolution, '1 second'), raw_horizon);  -- NULL: refuse nothing
END
$$;

-- Samples in [p_lo, p_hi] were written after the first tier rolled past p_lo: roll that again.
CREATE FUNCTION perfwatch.note_late(p_tier text, p_lo timestamptz, p_hi timestamptz) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        INSERT INTO perfwatch.rollup_dirty (tier, lo, hi) VALUES (p_tier, p_lo, p_hi);
    END;

-- The locks a rollup of p_tier takes (see the top of this file).
CREATE FUNCTION perfwatch.lock_for_rollup(p_level integer) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1885696614, 2);
    IF p_level = 1 THEN
        PERFORM pg_advisory_xact_lock(1885696614, 3);
    END IF;
END
$$;

-- Roll [p_lo, p_hi) of the level below into p_tier's buckets (both bounds on its bucket grid).
-- Upserts, and rewrites a bucket only when it differs: running it again changes nothing and
-- reports 0 rows. Returns the number of buckets written.
CREATE FUNCTION perfwatch.rollup_range(p_tier text, p_lo timestamptz, p_hi timestamptz) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch SET work_mem = '64MB' AS $$
DECLARE
    t perfwatch.tier;
    src perfwatch.tier;
    source_rows text;
    part timestamptz;
    written bigint;
BEGIN
    SELECT tt.* INTO t FROM perfwatch.tier tt WHERE tt.name = p_tier;
    SELECT s.* INTO src FROM perfwatch.archive_policy p
        JOIN perfwatch.archive_policy below ON below.level = p.level - 1
        JOIN perfwatch.tier s ON s.name = below.tier
        WHERE p.tier = p_tier;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tier % is not a rollup tier of the active policy', p_tier;
    END IF;
    IF p_lo <> perfwatch.bucket_floor(t.resolution, p_lo) OR p_hi <> perfwatch.bucket_floor(t.resolution, p_hi) THEN
        RAISE EXCEPTION 'rollup range [%, %) is not on the % bucket grid', p_lo, p_hi, p_tier;
    END IF;
    IF p_hi <= p_lo THEN
        RETURN 0;
    END IF;
    FOR part IN SELECT generate_series(perfwatch.bucket_floor(t.partition_width, p_lo), p_hi - interval '1 microsecond',
                                       t.partition_width) LOOP
        PERFORM perfwatch.ensure_partition(p_tier, part);
    END LOOP;
    -- Raw samples read as buckets of one sample each, so one statement rolls up every level.
    IF src.name = 'raw' THEN
        source_rows := format($q$
            SELECT series_id, ts AS bucket, 1 AS count, value AS sum, value AS min, value AS max,
                   ts AS first_ts, value AS first_value, ts AS last_ts, value AS last_value,
                   0::double precision AS increase, 0 AS resets
            FROM perfwatch.sample WHERE ts >= %L AND ts < %L$q$, p_lo, p_hi);
    ELSE
        source_rows := format($q$
            SELECT series_id, bucket, count, sum, min, max, first_ts, first_value, last_ts, last_value, increase, resets
            FROM perfwatch.%I WHERE bucket >= %L AND bucket < %L$q$, src.table_name, p_lo, p_hi);
    END IF;
    -- The aggregates read their input in (series, bucket, time) order, the window's: a float sum
    -- then comes out bit for bit the same whatever range is rolled, which idempotency relies on.
    EXECUTE format($q$
        INSERT INTO perfwatch.%1$I AS t
            (series_id, bucket, count, sum, min, max, first_ts, first_value, last_ts, last_value, increase, resets)
        SELECT s.series_id, s.b, sum(s.count), sum(s.sum), min(s.min), max(s.max),
               min(s.first_ts), min(s.fv), max(s.last_ts), min(s.lv),
               CASE WHEN s.counter THEN sum(s.increase) + sum(perfwatch.counter_delta(s.prev, s.first_value)) END,
               CASE WHEN s.counter THEN sum(s.resets) + count(*) FILTER (WHERE s.first_value < s.prev) END
        FROM (
            SELECT x.*,
                   lag(x.last_value) OVER w AS prev,
                   first_value(x.first_value) OVER w AS fv,
                   last_value(x.last_value) OVER w AS lv
            FROM (SELECT r.*, perfwatch.bucket_floor(%2$L, r.bucket) AS b, m.kind = 'counter' AS counter
                  FROM (%3$s) r
                  JOIN perfwatch.series se ON se.id = r.series_id
                  JOIN perfwatch.metric m ON m.id = se.metric_id) x
            WINDOW w AS (PARTITION BY x.series_id, x.b ORDER BY x.bucket
                         ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        ) s
        GROUP BY s.series_id, s.b, s.counter
        ON CONFLICT (series_id, bucket) DO UPDATE SET
            count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
            first_ts = excluded.first_ts, first_value = excluded.first_value,
            last_ts = excluded.last_ts, last_value = excluded.last_value,
            increase = excluded.increase, resets = excluded.resets
        WHERE (t.count, t.sum, t.min, t.max, t.first_ts, t.first_value, t.last_ts, t.last_value, t.increase, t.resets)
              IS DISTINCT FROM
              (excluded.count, excluded.sum, excluded.min, excluded.max, excluded.first_ts, excluded.first_value,
               excluded.last_ts, excluded.last_value, excluded.increase, excluded.resets)
        $q$, t.table_name, t.resolution, source_rows);
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$$;

-- One step of p_tier's rollup: the next closed chunk (at most p_chunk) after its watermark, then
-- the watermark moves. A bucket is closed when it ends at or before p_now - p_delay (first tier)
-- or the watermark of the level below (the others). Returns the range done; lo = hi: nothing to do.
-- Each call is one transaction, so a long catch-up holds the raw-write lock only briefly at a time.
CREATE FUNCTION perfwatch.rollup_next(p_tier text, p_now timestamptz, p_delay interval, p_chunk interval,
                                      OUT lo timestamptz, OUT hi timestamptz, OUT rows bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    pol perfwatch.archive_policy;
    t perfwatch.tier;
    src perfwatch.tier;
    closed_before timestamptz;
BEGIN
    SELECT * INTO pol FROM perfwatch.archive_policy WHERE tier = p_tier;
    IF NOT FOUND OR pol.level < 1 THEN
        RAISE EXCEPTION 'tier % is not a rollup tier of the active policy', p_tier;
    END IF;
    PERFORM perfwatch.lock_for_rollup(pol.level);
    SELECT * INTO t FROM perfwatch.tier WHERE name = p_tier;
    SELECT s.* INTO src FROM perfwatch.archive_policy below JOIN perfwatch.tier s ON s.name = below.tier
        WHERE below.level = pol.level - 1;
    IF src.name = 'raw' THEN
        closed_before := perfwatch.bucket_floor(t.resolution, p_now - p_delay);
    ELSIF src.watermark IS NULL THEN
        RETURN;
    ELSE
        closed_before := perfwatch.bucket_floor(t.resolution, src.watermark);
    END IF;
    lo := t.watermark;
    IF lo IS NULL THEN
        -- first run: start at the oldest data of the level below
        SELECT min(p.lo) INTO lo FROM perfwatch.partition p WHERE p.tier = src.name;
        IF lo IS NULL THEN
            RETURN;
        END IF;
        lo := perfwatch.bucket_floor(t.resolution, greatest(lo, src.horizon));
    END IF;
    IF lo >= closed_before THEN
        hi := lo;
        rows := 0;
        RETURN;
    END IF;
    hi := least(lo + p_chunk, closed_before);
    rows := perfwatch.rollup_range(p_tier, lo, hi);
    UPDATE perfwatch.tier SET watermark = hi WHERE name = p_tier;
END
$$;

-- Roll again what late samples changed below p_tier's watermark (rollup_dirty), and pass the
-- buckets that changed on to the next tier when it has already rolled past them.
-- Periods whose source was dropped by retention cannot be rebuilt and are left as they are.
CREATE FUNCTION perfwatch.rollup_dirty(p_tier text) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    pol perfwatch.archive_policy;
    t perfwatch.tier;
    src perfwatch.tier;
    nxt perfwatch.tier;
    floor_at timestamptz;
    rng tstzrange;
    n bigint;
    total bigint := 0;
BEGIN
    SELECT * INTO pol FROM perfwatch.archive_policy WHERE tier = p_tier;
    IF NOT FOUND OR pol.level < 1 THEN
        RAISE EXCEPTION 'tier % is not a rollup tier of the active policy', p_tier;
    END IF;
    PERFORM perfwatch.lock_for_rollup(pol.level);
    SELECT * INTO t FROM perfwatch.tier WHERE name = p_tier;
    SELECT s.* INTO src FROM perfwatch.archive_policy below JOIN perfwatch.tier s ON s.name = below.tier
        WHERE below.level = pol.level - 1;
    SELECT s.* INTO nxt FROM perfwatch.archive_policy above JOIN perfwatch.tier s ON s.name = above.tier
        WHERE above.level = pol.level + 1;
    IF t.watermark IS NULL THEN
        -- nothing rolled up yet: the forward pass will see these samples
        DELETE FROM perfwatch.rollup_dirty WHERE tier = p_tier;
        RETURN 0;
    END IF;
    floor_at := greatest(coalesce(perfwatch.bucket_ceil(t.resolution, src.horizon), '-infinity'),
                         coalesce(t.horizon, '-infinity'));
    FOR rng IN
        WITH d AS (DELETE FROM perfwatch.rollup_dirty WHERE tier = p_tier RETURNING lo, hi),
             b AS (SELECT greatest(perfwatch.bucket_floor(t.resolution, d.lo), floor_at) AS lo,
                          least(perfwatch.bucket_floor(t.resolution, d.hi) + t.resolution, t.watermark) AS hi
                   FROM d)
        SELECT unnest(range_agg(tstzrange(b.lo, b.hi))) FROM b WHERE b.lo < b.hi
    LOOP
        n := perfwatch.rollup_range(p_tier, lower(rng), upper(rng));
        total := total + n;
        IF n > 0 AND nxt.watermark IS NOT NULL AND lower(rng) < nxt.watermark THEN
            INSERT INTO perfwatch.rollup_dirty (tier, lo, hi)
                VALUES (nxt.name, lower(rng), least(upper(rng), nxt.watermark) - interval '1 microsecond');
        END IF;
    END LOOP;
    RETURN total;
END
$$;

-- Partitions of p_tier for the period around p_now (the current one and the next), so writes
-- never wait for one. Returns those it created.
CREATE FUNCTION perfwatch.create_partitions_ahead(p_tier text, p_now timestamptz) RETURNS SETOF text
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    t perfwatch.tier;
    at timestamptz;
BEGIN
    SELECT * INTO t FROM perfwatch.tier WHERE name = p_tier;
    FOREACH at IN ARRAY ARRAY[p_now, p_now + t.partition_width] LOOP
        IF NOT EXISTS (SELECT FROM perfwatch.partition p
                       WHERE p.tier = p_tier AND p.lo = perfwatch.bucket_floor(t.partition_width, at)) THEN
            RETURN NEXT perfwatch.ensure_partition(p_tier, at);
        END IF;
    END LOOP;
END
$$;

-- Retention for p_tier: drop each partition that ended more than its retention before p_now AND
-- that the next tier has rolled up completely (its watermark at or past the partition's end, and
-- no late samples there still waiting to be rolled). Expired partitions kept for the second
-- reason are returned with dropped = false. Drops go oldest first, so the horizon only moves on.
CREATE FUNCTION perfwatch.drop_expired(p_tier text, p_now timestamptz)
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
    PERFORM pg_advisory_xact_lock(1885696614, 2);
    IF pol.level = 0 THEN
        PERFORM pg_advisory_xact_lock(1885696614, 3);
    END IF;
    SELECT s.* INTO nxt FROM perfwatch.archive_policy above JOIN perfwatch.tier s ON s.name = above.tier
        WHERE above.level = pol.level + 1;
    has_next := FOUND;
    FOR p IN SELECT * FROM perfwatch.partition pp WHERE pp.tier = p_tier AND pp.hi <= p_now - pol.retention
             ORDER BY pp.lo LOOP
        blocked := blocked OR (has_next AND (nxt.watermark IS NULL OR p.hi > nxt.watermark
                     OR EXISTS (SELECT FROM perfwatch.rollup_dirty d WHERE d.tier = nxt.name AND d.lo < p.hi)));
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

CREATE FUNCTION perfwatch.record_rollup(p_tier text, p_at timestamptz, p_seconds double precision, p_rows bigint)
    RETURNS void LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        UPDATE perfwatch.archive_policy
           SET last_rollup_at = p_at, last_rollup_seconds = p_seconds, last_rollup_rows = p_rows
         WHERE tier = p_tier;
    END;

CREATE FUNCTION perfwatch.record_retention(p_tier text, p_at timestamptz, p_seconds double precision,
                                           p_dropped integer, p_waiting integer)
    RETURNS void LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        UPDATE perfwatch.archive_policy
           SET last_retention_at = p_at, last_retention_seconds = p_seconds,
               last_retention_dropped = p_dropped, last_retention_waiting = p_waiting
         WHERE tier = p_tier;
    END;
