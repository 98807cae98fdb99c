-- Partitions: every level (raw and each tier) is range-partitioned by time; a partition is
-- created before it is needed and dropped whole by retention (retention.sql).

-- The partition of `p_tier` holding time `p_at`, created if missing. SECURITY DEFINER so that the
-- writer owns every partition whoever asks (a superuser DSN included) and can drop it later.
CREATE OR REPLACE FUNCTION perfwatch.ensure_partition(p_tier text, p_at timestamptz) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, perfwatch SET lock_timeout = '5s' AS $$
DECLARE
    t perfwatch.tier;
    p_lo timestamptz;
    p_name text;
    packed boolean := p_tier = 'packed' OR p_tier LIKE 'packed\_%';
    time_column text := CASE WHEN p_tier = 'raw' THEN 'ts' WHEN packed THEN 'start' ELSE 'bucket' END;
    -- chunks: TOAST compresses a row only once it is longer than this (the default is ~2 kB)
    storage text := CASE WHEN packed THEN ' WITH (toast_tuple_target = 128)' ELSE '' END;
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
    -- A table of its own, then ATTACH: CREATE TABLE ... PARTITION OF takes ACCESS EXCLUSIVE on the
    -- level's table, which waits for every reader's ACCESS SHARE (a Grafana session idle in a
    -- transaction that read it), and every writer queues behind it. ATTACH PARTITION takes SHARE
    -- UPDATE EXCLUSIVE, which conflicts with neither; it builds the level's indexes on the new,
    -- empty table. The CHECK constraint spares it the scan for rows outside the range.
    EXECUTE format('CREATE TABLE perfwatch.%I (LIKE perfwatch.%I INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMPRESSION, '
                   'CONSTRAINT %I CHECK (%I >= %L AND %I < %L))%s',
                   p_name, t.table_name, p_name || '_range', time_column, p_lo, time_column, p_lo + t.partition_width,
                   storage);
    EXECUTE format('ALTER TABLE perfwatch.%I ATTACH PARTITION perfwatch.%I FOR VALUES FROM (%L) TO (%L)',
                   t.table_name, p_name, p_lo, p_lo + t.partition_width);
    INSERT INTO perfwatch.partition (tier, lo, hi, table_name) VALUES (p_tier, p_lo, p_lo + t.partition_width, p_name);
    RETURN p_name;
END
$$;

-- Partitions of p_tier for the period around p_now (the current one and the next), so writes
-- never wait for one. Returns those it created.
CREATE OR REPLACE FUNCTION perfwatch.create_partitions_ahead(p_tier text, p_now timestamptz) RETURNS SETOF text
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

-- A rollup tier's table, named by the archiver (p_name: its resolution as the config writes
-- durations, 5m → rollup_5m). Buckets keep what makes every later query exact (Thanos'
-- aggregates): count, sum, min, max (avg = sum/count at every tier), first/last sample time and
-- value, and for counters the reset-corrected increase between consecutive samples inside the
-- bucket and the number of resets there. Increases across a bucket boundary are recovered from
-- last_value and the next bucket's first_value. A partition holds 288 buckets (5m: a day, 1h: 12
-- days). Returns p_name; an existing tier of that name must have that resolution.
CREATE OR REPLACE FUNCTION perfwatch.create_tier(p_name text, p_resolution interval) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    t_table text := 'rollup_' || p_name;
    known interval;
BEGIN
    IF p_name !~ '^[0-9a-z]+$' OR p_resolution <= interval '0' THEN
        RAISE EXCEPTION 'a tier needs a name of digits and letters and a positive resolution, not % and %',
            p_name, p_resolution;
    END IF;
    LOCK TABLE perfwatch.lock_partition IN EXCLUSIVE MODE;
    SELECT resolution INTO known FROM perfwatch.tier WHERE name = p_name;
    IF FOUND THEN
        IF known <> p_resolution THEN
            RAISE EXCEPTION 'tier % exists with resolution %, not %', p_name, known, p_resolution;
        END IF;
        PERFORM perfwatch.create_packed_tier(p_name);  -- a tier made before storage v2
        RETURN p_name;
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
        VALUES (p_name, p_resolution, t_table, p_resolution * 288);
    PERFORM perfwatch.create_packed_tier(p_name);
    RETURN p_name;
END
$$;

-- A level's state (perfwatch.tier): its table, partition width, watermark and horizon.
CREATE OR REPLACE FUNCTION perfwatch.tier_state(p_tier text) RETURNS perfwatch.tier
    LANGUAGE sql STABLE SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        SELECT * FROM perfwatch.tier WHERE name = p_tier;
    END;
