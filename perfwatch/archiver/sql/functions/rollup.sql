-- Rollups: each tier is built from the level below it (the first from raw samples), forward from
-- its watermark (rollup_next), and again where late samples changed what it had rolled up
-- (rollup_dirty). perfwatch/archiver/rollup.py drives one pass over every tier.

-- Samples in [p_lo, p_hi] were written after the first tier rolled past p_lo: roll that again.
CREATE OR REPLACE FUNCTION perfwatch.note_late(p_tier text, p_lo timestamptz, p_hi timestamptz) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        INSERT INTO perfwatch.rollup_dirty (tier, lo, hi) VALUES (p_tier, p_lo, p_hi);
    END;

-- Roll [p_lo, p_hi) of the level below into p_tier's buckets (both bounds on its bucket grid), with
-- merge_samples_sql from raw samples, merge_buckets_sql from a tier's buckets (buckets.sql). Upserts, and rewrites a bucket only when it differs: running it
-- again changes nothing and reports 0 rows. Returns the number of buckets written.
CREATE OR REPLACE FUNCTION perfwatch.rollup_range(p_tier text, p_lo timestamptz, p_hi timestamptz) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch SET work_mem = '64MB' AS $$
DECLARE
    t perfwatch.tier;
    src perfwatch.tier;
    merged text;
    part timestamptz;
    written bigint;
    packed_before timestamptz;
    packed perfwatch.tier;
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
    IF src.name = 'raw' THEN
        merged := perfwatch.merge_samples_sql(perfwatch.raw_samples_sql(p_lo, p_hi, NULL), t.resolution);
    ELSE
        merged := perfwatch.merge_buckets_sql(perfwatch.tier_buckets_sql(src.name, p_lo, p_hi, NULL), t.resolution,
                                              false);
    END IF;
    EXECUTE format($q$
        INSERT INTO perfwatch.%1$I AS t
            (series_id, bucket, count, sum, min, max, first_ts, first_value, last_ts, last_value, increase, resets)
        SELECT g.series_id, g.bucket, g.count, g.sum, g.min, g.max, g.first_ts, g.first_value, g.last_ts,
               g.last_value, CASE WHEN m.kind <> 'gauge' THEN g.increase END,
               CASE WHEN m.kind <> 'gauge' THEN g.resets END
        FROM (%2$s) g
        JOIN perfwatch.series se ON se.id = g.series_id
        JOIN perfwatch.metric m ON m.id = se.metric_id
        ON CONFLICT (series_id, bucket) DO UPDATE SET
            count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
            first_ts = excluded.first_ts, first_value = excluded.first_value,
            last_ts = excluded.last_ts, last_value = excluded.last_value,
            increase = excluded.increase, resets = excluded.resets
        WHERE (t.count, t.sum, t.min, t.max, t.first_ts, t.first_value, t.last_ts, t.last_value, t.increase, t.resets)
              IS DISTINCT FROM
              (excluded.count, excluded.sum, excluded.min, excluded.max, excluded.first_ts, excluded.first_value,
               excluded.last_ts, excluded.last_value, excluded.increase, excluded.resets)
        $q$, t.table_name, merged);
    GET DIAGNOSTICS written = ROW_COUNT;
    -- Buckets of windows already packed (rolled up again for late samples) go into their chunks.
    SELECT watermark INTO packed_before FROM perfwatch.tier WHERE name = perfwatch.packed_level(p_tier);
    IF p_lo < packed_before THEN
        -- A sample days late may be older than every chunk partition the tier has: create them.
        SELECT tt.* INTO packed FROM perfwatch.tier tt WHERE tt.name = perfwatch.packed_level(p_tier);
        FOR part IN SELECT generate_series(perfwatch.bucket_floor(packed.partition_width, p_lo),
                                           least(p_hi, packed_before) - interval '1 microsecond',
                                           packed.partition_width) LOOP
            PERFORM perfwatch.ensure_partition(packed.name, part);
        END LOOP;
        EXECUTE format('CREATE TEMPORARY TABLE perfwatch_repacked ON COMMIT DROP AS WITH moved AS ('
                       'DELETE FROM perfwatch.%I WHERE bucket >= %L AND bucket < %L RETURNING *) SELECT * FROM moved',
                       t.table_name, p_lo, least(p_hi, packed_before));
        PERFORM perfwatch.pack_buckets(p_tier, 'SELECT series_id, bucket, count, sum, min, max, first_ts, first_value, '
                                       'last_ts, last_value, increase, resets FROM perfwatch_repacked', true);
        DROP TABLE perfwatch_repacked;
    END IF;
    RETURN written;
END
$$;

-- The next range of p_tier to roll up after its watermark, under the rollup's locks (begin_rollup,
-- held to the end of the caller's transaction): at most p_chunk of closed buckets. A bucket is
-- closed when it ends at or before p_now - p_delay (first tier) or the watermark of the level below
-- (the others). lo NULL: nothing to roll up yet; lo = hi: nothing closed after the watermark.
-- skipped: the level below has no data (and no late sample) in [lo, hi), and the watermark has been
-- moved past that gap at once rather than a chunk per transaction.
CREATE OR REPLACE FUNCTION perfwatch.rollup_window(p_tier text, p_now timestamptz, p_delay interval, p_chunk interval,
                                                   OUT lo timestamptz, OUT hi timestamptz, OUT skipped boolean)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    levels record;
    t perfwatch.tier;
    src perfwatch.tier;
    closed_before timestamptz;
    next_data timestamptz;
BEGIN
    SELECT * INTO levels FROM perfwatch.begin_rollup(p_tier);
    t := levels.t;
    src := levels.src;
    skipped := false;
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
        SELECT min(p.lo) INTO lo FROM perfwatch.level_partitions(src.name) p;
        IF lo IS NULL THEN
            RETURN;
        END IF;
        lo := perfwatch.bucket_floor(t.resolution, greatest(lo, src.horizon));
    END IF;
    IF lo >= closed_before THEN
        hi := lo;
        RETURN;
    END IF;
    SELECT least(min(p.lo), (SELECT min(l.ts) FROM perfwatch.sample_late l
                             WHERE src.name = 'raw' AND l.ts >= rollup_window.lo))
        INTO next_data FROM perfwatch.level_partitions(src.name) p WHERE p.hi > rollup_window.lo;
    next_data := perfwatch.bucket_floor(t.resolution, next_data);
    IF next_data IS NULL OR next_data >= closed_before THEN
        hi := closed_before;
        skipped := true;
        UPDATE perfwatch.tier SET watermark = hi WHERE name = p_tier;
        RETURN;
    END IF;
    lo := greatest(lo, next_data);
    hi := least(lo + p_chunk, closed_before);
END
$$;

-- One step of p_tier's rollup: the next closed chunk (at most p_chunk) after its watermark
-- (rollup_window), then the watermark moves. Returns the range done; lo = hi: nothing to do.
-- Each call is one transaction, so a long catch-up holds the raw-write lock only briefly at a time.
CREATE OR REPLACE FUNCTION perfwatch.rollup_next(p_tier text, p_now timestamptz, p_delay interval, p_chunk interval,
                                      OUT lo timestamptz, OUT hi timestamptz, OUT rows bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    skipped boolean;
BEGIN
    SELECT w.lo, w.hi, w.skipped INTO lo, hi, skipped FROM perfwatch.rollup_window(p_tier, p_now, p_delay, p_chunk) w;
    IF lo IS NULL THEN
        RETURN;
    END IF;
    rows := 0;
    IF skipped OR hi <= lo THEN
        RETURN;
    END IF;
    rows := perfwatch.rollup_range(p_tier, lo, hi);
    UPDATE perfwatch.tier SET watermark = hi WHERE name = p_tier;
END
$$;

-- A long catch-up (rollup.py) rolls up on several connections at once: the rollup's transaction
-- takes the next range with rollup_window, which takes the rollup's locks, and while it holds them
-- (writers, the compaction and retention wait, as for rollup_next) other connections roll up its
-- pieces with rollup_piece, each committing on its own; then it moves the watermark (set_watermark)
-- and commits. Until then readers take the range from the level below, as the watermark says; a
-- piece done before a failure is done again, to the same buckets, by the next pass.
-- p_holder: the backend pid of the transaction holding the locks, which rollup_piece checks.
CREATE OR REPLACE FUNCTION perfwatch.rollup_piece(p_tier text, p_lo timestamptz, p_hi timestamptz, p_holder integer)
    RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    PERFORM perfwatch.assert_locks_held(perfwatch.rollup_locks(p_tier), p_holder, format('rollup of tier %s', p_tier));
    RETURN perfwatch.rollup_range(p_tier, p_lo, p_hi);
END
$$;

-- Move p_tier's watermark to p_hi, in the transaction that holds its rollup's locks.
CREATE OR REPLACE FUNCTION perfwatch.set_watermark(p_tier text, p_hi timestamptz) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    PERFORM perfwatch.assert_locks_held(perfwatch.rollup_locks(p_tier), pg_backend_pid(),
                                        format('rollup of tier %s', p_tier));
    UPDATE perfwatch.tier SET watermark = p_hi WHERE name = p_tier;
END
$$;

-- The locks begin_rollup takes for p_tier: the first tier's also the raw-write lock.
CREATE OR REPLACE FUNCTION perfwatch.rollup_locks(p_tier text) RETURNS text[]
    LANGUAGE sql STABLE SET search_path = pg_catalog, perfwatch
    RETURN CASE WHEN (SELECT level FROM perfwatch.archive_policy WHERE tier = p_tier) = 1
                THEN ARRAY['lock_rollup', 'lock_raw_write'] ELSE ARRAY['lock_rollup'] END;

-- Roll again what late samples changed below p_tier's watermark (rollup_dirty), and pass the
-- buckets that changed on to the next tier when it has already rolled past them.
-- Periods whose source was dropped by retention cannot be rebuilt and are left as they are.
CREATE OR REPLACE FUNCTION perfwatch.rollup_dirty(p_tier text) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    levels record;
    t perfwatch.tier;
    src perfwatch.tier;
    nxt perfwatch.tier;
    floor_at timestamptz;
    rng tstzrange;
    n bigint;
    total bigint := 0;
BEGIN
    SELECT * INTO levels FROM perfwatch.begin_rollup(p_tier);
    t := levels.t;
    src := levels.src;
    nxt := levels.nxt;
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

CREATE OR REPLACE FUNCTION perfwatch.record_rollup(p_tier text, p_at timestamptz, p_seconds double precision, p_rows bigint)
    RETURNS void LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        UPDATE perfwatch.archive_policy
           SET last_rollup_at = p_at, last_rollup_seconds = p_seconds, last_rollup_rows = p_rows
         WHERE tier = p_tier;
    END;
