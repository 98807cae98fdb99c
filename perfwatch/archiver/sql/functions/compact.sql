-- Compaction (the `compact` step of store → compact → rollup → retention): the head's samples of
-- each closed window are packed into one perfwatch.sample_chunk row per series, behind the
-- 'packed' tier's watermark (schema 0007); samples that arrive later for a packed window wait in
-- perfwatch.sample_late and are merged into their chunk. perfwatch/archiver/compact.py drives it.
-- Readers take every raw sample through raw_buckets_sql (below), so what is packed, late or still
-- in the head reads the same.

-- The level holding a level's packed chunks (a row of perfwatch.tier of its own, for the watermark
-- and the partitions): 'packed' for raw, 'packed_<tier>' for a rollup tier.
CREATE OR REPLACE FUNCTION perfwatch.packed_level(p_tier text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN p_tier = 'raw' THEN 'packed' ELSE 'packed_' || p_tier END;

-- The partitions holding a level's data: its table's and its packed chunks'.
CREATE OR REPLACE FUNCTION perfwatch.level_partitions(p_tier text) RETURNS SETOF perfwatch.partition
    LANGUAGE sql STABLE SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        SELECT * FROM perfwatch.partition p WHERE p.tier IN (p_tier, perfwatch.packed_level(p_tier));
    END;

-- Queue p_tier's partitions that end at or before p_before (everything in them is packed) to be
-- detached and dropped outside the caller's transaction, as retention's are (perfwatch.partition_drop).
CREATE OR REPLACE FUNCTION perfwatch.release_packed(p_tier text, p_before timestamptz) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        WITH released AS (
            DELETE FROM perfwatch.partition p WHERE p.tier = p_tier AND p.hi <= p_before RETURNING p.*)
        INSERT INTO perfwatch.partition_drop (table_name, parent, tier, lo, hi)
            SELECT r.table_name, t.table_name, r.tier, r.lo, r.hi
            FROM released r JOIN perfwatch.tier t ON t.name = r.tier
        ON CONFLICT (table_name) DO NOTHING;
    END;

-- The query of every raw sample of [p_lo, p_hi) (series_id, ts, value): from the chunks and the
-- late samples before the packed watermark, from the head after it. p_series: a SQL expression for
-- an integer[] of the series to read (e.g. '$3'), NULL for all.
CREATE OR REPLACE FUNCTION perfwatch.raw_samples_sql(p_lo timestamptz, p_hi timestamptz, p_series text)
    RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    packed perfwatch.tier;
    packed_before timestamptz;
    only_series text := CASE WHEN p_series IS NULL THEN '' ELSE format(' AND series_id = ANY (%s)', p_series) END;
    parts text[] := '{}';
BEGIN
    SELECT * INTO packed FROM perfwatch.tier WHERE name = 'packed';
    packed_before := coalesce(packed.watermark, '-infinity');
    IF p_hi > packed_before THEN
        parts := parts || format('SELECT series_id, ts, value FROM perfwatch.sample WHERE ts >= %L AND ts < %L%s',
                                 greatest(p_lo, packed_before), p_hi, only_series);
    END IF;
    IF p_lo < packed_before THEN
        parts := parts || format('SELECT series_id, ts, value FROM perfwatch.sample_late WHERE ts >= %L AND ts < %L%s',
                                 p_lo, least(p_hi, packed_before), only_series);
        parts := parts || format($q$
            SELECT u.series_id, u.ts, u.value FROM (
                SELECT c.series_id, c.start + (c.t0 + c.step * (e.n - 1) + e.jitter) * interval '1 millisecond' AS ts,
                       e.value
                FROM perfwatch.sample_chunk c, unnest(c.jitter, c.vals) WITH ORDINALITY AS e(jitter, value, n)
                WHERE c.start >= %L AND c.start < %L%s) u
            WHERE u.ts >= %L AND u.ts < %L$q$,
            perfwatch.bucket_floor(packed.resolution, p_lo), least(p_hi, packed_before), only_series, p_lo,
            least(p_hi, packed_before));
    END IF;
    IF cardinality(parts) = 0 THEN
        parts := ARRAY['SELECT NULL::integer AS series_id, NULL::timestamptz AS ts, NULL::double precision AS value '
                       'WHERE false'];
    END IF;
    RETURN array_to_string(parts, ' UNION ALL ');
END
$$;

-- The same samples as bucket rows of one sample each (the shape merge_buckets_sql reads: res 0,
-- increase 0, resets 0).
CREATE OR REPLACE FUNCTION perfwatch.raw_buckets_sql(p_lo timestamptz, p_hi timestamptz, p_series text)
    RETURNS text
    LANGUAGE sql STABLE SET search_path = pg_catalog, perfwatch
    RETURN format($q$
        SELECT r.series_id, r.ts AS bucket, 0::double precision AS res, 1 AS count, r.value AS sum, r.value AS min,
               r.value AS max, r.ts AS first_ts, r.value AS first_value, r.ts AS last_ts, r.value AS last_value,
               0::double precision AS increase, 0 AS resets
        FROM (%s) r$q$, perfwatch.raw_samples_sql(p_lo, p_hi, p_series));

-- Pack the samples p_source yields (series_id, ts, value; milliseconds apart at least, as
-- Prometheus' are) into chunks of p_width windows, merged with what the chunks of those windows
-- already hold (a sample already packed keeps its value: the first write wins, as in the head).
-- p_merge false: the caller knows no chunk of these windows exists yet (packing the head forward),
-- which spares the merge's sort. Returns the number of samples in the chunks written.
CREATE OR REPLACE FUNCTION perfwatch.pack_samples(p_source text, p_width interval, p_merge boolean) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch SET work_mem = '64MB' AS $$
DECLARE
    source_rows text := p_source;
    packed bigint;
BEGIN
    IF p_merge THEN
        source_rows := format($q$
            SELECT DISTINCT ON (m.series_id, m.ts) m.series_id, m.ts, m.value
            FROM (SELECT s.series_id, s.ts, s.value, 1 AS rank FROM (%1$s) s
                  UNION ALL
                  SELECT c.series_id, c.start + (c.t0 + c.step * (e.n - 1) + e.jitter) * interval '1 millisecond',
                         e.value, 0
                  FROM perfwatch.sample_chunk c, unnest(c.jitter, c.vals) WITH ORDINALITY AS e(jitter, value, n)
                  WHERE (c.series_id, c.start) IN (SELECT DISTINCT s.series_id, perfwatch.bucket_floor(%2$L, s.ts)
                                                   FROM (%1$s) s)) m
            ORDER BY m.series_id, m.ts, m.rank$q$, p_source, p_width);
    END IF;
    -- One aggregate per window (a window function per sample was five times slower); the jitter is
    -- then computed per chunk from its offsets, in memory.
    EXECUTE format($q$
        INSERT INTO perfwatch.sample_chunk AS c (series_id, start, samples, t0, step, jitter, vals)
        SELECT g.series_id, g.start, g.n, g.t0, g.step,
               ARRAY(SELECT o.off - (g.t0 + g.step * (o.i - 1)) FROM unnest(g.offs) WITH ORDINALITY AS o(off, i)),
               g.vals
        FROM (
            SELECT a.*, CASE WHEN a.n > 1 THEN round((a.last_off - a.t0)::double precision / (a.n - 1))::integer
                             ELSE 0 END AS step
            FROM (
                SELECT r.series_id, r.start, count(*)::integer AS n, min(r.off) AS t0, max(r.off) AS last_off,
                       array_agg(r.off ORDER BY r.off) AS offs, array_agg(r.value ORDER BY r.off) AS vals
                FROM (SELECT s.series_id, s.value, b.start,
                             round(date_part('epoch', s.ts - b.start) * 1000)::integer AS off
                      FROM (%1$s) s, LATERAL (SELECT perfwatch.bucket_floor(%2$L, s.ts) AS start) b) r
                GROUP BY r.series_id, r.start
            ) a
        ) g
        ON CONFLICT (series_id, start) DO UPDATE SET
            samples = excluded.samples, t0 = excluded.t0, step = excluded.step, jitter = excluded.jitter,
            vals = excluded.vals
        $q$, source_rows, p_width);
    GET DIAGNOSTICS packed = ROW_COUNT;
    RETURN packed;
END
$$;

-- The head's next closed stretch to pack (at most p_span, whole windows) after the packed
-- watermark, under the raw-write lock (held to the end of the caller's transaction), so a write is
-- either packed by this step or sees the watermark it leaves and goes to sample_late. A window is
-- closed once it ends at or before p_now - p_delay. lo NULL: no head data at all; lo = hi: nothing
-- closed. skipped: no head partition in [lo, hi) (a gap in the archive, the years before an
-- import): the watermark has moved past it at once.
CREATE OR REPLACE FUNCTION perfwatch.compact_window(p_now timestamptz, p_delay interval, p_span interval,
                                                    OUT lo timestamptz, OUT hi timestamptz, OUT skipped boolean)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    packed perfwatch.tier;
    closed_before timestamptz;
    next_data timestamptz;
BEGIN
    LOCK TABLE perfwatch.lock_raw_write IN EXCLUSIVE MODE;
    SELECT * INTO packed FROM perfwatch.tier WHERE name = 'packed';
    skipped := false;
    closed_before := perfwatch.bucket_floor(packed.resolution, p_now - p_delay);
    lo := packed.watermark;
    IF lo IS NULL THEN
        SELECT perfwatch.bucket_floor(packed.resolution, min(p.lo)) INTO lo FROM perfwatch.partition p WHERE p.tier = 'raw';
        IF lo IS NULL THEN
            RETURN;
        END IF;
    END IF;
    IF lo >= closed_before THEN
        hi := lo;
        RETURN;
    END IF;
    -- Every head sample is in a head partition: where none is, there is nothing to pack.
    SELECT perfwatch.bucket_floor(packed.resolution, min(p.lo)) INTO next_data
        FROM perfwatch.partition p WHERE p.tier = 'raw' AND p.hi > compact_window.lo;
    IF next_data < lo THEN
        next_data := lo;
    END IF;
    IF next_data IS NULL OR next_data >= closed_before THEN
        hi := closed_before;
        skipped := true;
        UPDATE perfwatch.tier SET watermark = hi WHERE name = 'packed';
        RETURN;
    END IF;
    lo := next_data;
    hi := least(perfwatch.bucket_floor(packed.resolution, lo + p_span), closed_before);
    IF hi <= lo THEN
        hi := lo + packed.resolution;
    END IF;
END
$$;

-- Pack the head's samples of [p_lo, p_hi) (whole windows) into chunks, merged with chunks already
-- there (a step done before a failure). Returns the number of chunks written.
CREATE OR REPLACE FUNCTION perfwatch.compact_range(p_lo timestamptz, p_hi timestamptz) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    packed perfwatch.tier;
    part timestamptz;
BEGIN
    SELECT * INTO packed FROM perfwatch.tier WHERE name = 'packed';
    FOR part IN SELECT generate_series(perfwatch.bucket_floor(packed.partition_width, p_lo),
                                       p_hi - interval '1 microsecond', packed.partition_width) LOOP
        PERFORM perfwatch.ensure_partition('packed', part);
    END LOOP;
    RETURN perfwatch.pack_samples(
        format('SELECT series_id, ts, value FROM perfwatch.sample WHERE ts >= %L AND ts < %L', p_lo, p_hi),
        packed.resolution,
        EXISTS (SELECT FROM perfwatch.sample_chunk c WHERE c.start >= p_lo AND c.start < p_hi));
END
$$;

-- The packed watermark moves to p_hi, in the step's transaction (it holds the raw-write lock), and
-- head partitions that end at or before it are queued to be dropped (perfwatch.partition_drop; the
-- archiver detaches and drops them outside this transaction).
CREATE OR REPLACE FUNCTION perfwatch.compact_advance(p_hi timestamptz) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    PERFORM perfwatch.assert_locks_held(ARRAY['lock_raw_write'], pg_backend_pid(), 'compaction');
    UPDATE perfwatch.tier SET watermark = p_hi WHERE name = 'packed';
    PERFORM perfwatch.release_packed('raw', p_hi);
END
$$;

-- One step of the compaction in one transaction: the next stretch (compact_window), packed, then
-- the watermark moves. Returns the range packed (lo = hi: nothing to do) and the chunks written.
CREATE OR REPLACE FUNCTION perfwatch.compact_next(p_now timestamptz, p_delay interval, p_span interval,
                                                  OUT lo timestamptz, OUT hi timestamptz, OUT chunks bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    skipped boolean;
BEGIN
    SELECT w.lo, w.hi, w.skipped INTO lo, hi, skipped FROM perfwatch.compact_window(p_now, p_delay, p_span) w;
    IF lo IS NULL THEN
        RETURN;
    END IF;
    chunks := 0;
    IF skipped OR hi <= lo THEN
        RETURN;
    END IF;
    chunks := perfwatch.compact_range(lo, hi);
    PERFORM perfwatch.compact_advance(hi);
END
$$;

-- A piece [p_lo, p_hi) of a compaction step that runs on several connections at once (compact.py):
-- the step's transaction (backend p_holder) holds the raw-write lock and waits, as rollup_piece's.
CREATE OR REPLACE FUNCTION perfwatch.compact_piece(p_lo timestamptz, p_hi timestamptz, p_holder integer) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    PERFORM perfwatch.assert_locks_held(ARRAY['lock_raw_write'], p_holder, 'compaction');
    RETURN perfwatch.compact_range(p_lo, p_hi);
END
$$;

-- Merge the late samples of the oldest stretch (at most p_span) that has any into their chunks.
-- Returns the range merged (NULL: no late samples) and how many samples it merged.
CREATE OR REPLACE FUNCTION perfwatch.compact_late(p_span interval, OUT lo timestamptz, OUT hi timestamptz,
                                                  OUT merged bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    packed perfwatch.tier;
    part timestamptz;
BEGIN
    LOCK TABLE perfwatch.lock_raw_write IN EXCLUSIVE MODE;
    SELECT * INTO packed FROM perfwatch.tier WHERE name = 'packed';
    SELECT perfwatch.bucket_floor(packed.resolution, min(l.ts)) INTO lo FROM perfwatch.sample_late l;
    IF lo IS NULL THEN
        RETURN;
    END IF;
    hi := lo + greatest(perfwatch.bucket_ceil(packed.resolution, lo + p_span) - lo, packed.resolution);
    FOR part IN SELECT generate_series(perfwatch.bucket_floor(packed.partition_width, lo), hi - interval '1 microsecond',
                                       packed.partition_width) LOOP
        PERFORM perfwatch.ensure_partition('packed', part);
    END LOOP;
    CREATE TEMPORARY TABLE IF NOT EXISTS perfwatch_late_merge (series_id integer, ts timestamptz,
                                                               value double precision) ON COMMIT DELETE ROWS;
    WITH moved AS (DELETE FROM perfwatch.sample_late l WHERE l.ts >= compact_late.lo AND l.ts < compact_late.hi
                   RETURNING l.series_id, l.ts, l.value)
    INSERT INTO perfwatch_late_merge SELECT * FROM moved;
    GET DIAGNOSTICS merged = ROW_COUNT;
    PERFORM perfwatch.pack_samples('SELECT series_id, ts, value FROM perfwatch_late_merge', packed.resolution, true);
END
$$;

-- Whether p_ts of series p_series_id is already in a chunk (a replayed sample), for the store.
CREATE OR REPLACE FUNCTION perfwatch.is_packed(p_series_id integer, p_ts timestamptz, p_width interval) RETURNS boolean
    LANGUAGE sql STABLE SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        SELECT EXISTS (
            SELECT FROM perfwatch.sample_chunk c, unnest(c.jitter) WITH ORDINALITY AS e(jitter, n)
            WHERE c.series_id = p_series_id AND c.start = perfwatch.bucket_floor(p_width, p_ts)
              AND c.start + (c.t0 + c.step * (e.n - 1) + e.jitter) * interval '1 millisecond' = p_ts);
    END;

GRANT EXECUTE ON FUNCTION
    perfwatch.level_partitions(text),
    perfwatch.raw_samples_sql(timestamptz, timestamptz, text),
    perfwatch.raw_buckets_sql(timestamptz, timestamptz, text)
TO perfwatch_grafana;

-- Rollup tiers are packed the same way: each closed window of a tier (its partition's width, 288
-- buckets) becomes one row per series of <table>_chunk, behind the watermark of the level
-- packed_level(tier) ('packed_5m'), once the tier has rolled past the window. A bucket rolled up
-- again later (late samples) is merged into its chunk by rollup_range.

-- p_tier's chunk table and level, if missing (create_tier calls it for every tier of the policy).
-- Bucket i of a chunk is at start + slots[i] resolutions; first and last sample times are ms
-- after the bucket's start; increase and resets are NULL for a gauge.
CREATE OR REPLACE FUNCTION perfwatch.create_packed_tier(p_tier text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    t perfwatch.tier;
    chunk_table text;
BEGIN
    SELECT * INTO t FROM perfwatch.tier WHERE name = p_tier;
    IF NOT FOUND OR p_tier = 'raw' OR EXISTS (SELECT FROM perfwatch.tier WHERE name = perfwatch.packed_level(p_tier)) THEN
        RETURN;
    END IF;
    chunk_table := t.table_name || '_chunk';
    EXECUTE format($f$
        CREATE TABLE perfwatch.%1$I (
            series_id   integer NOT NULL,
            start       timestamptz NOT NULL,
            slots       integer[] NOT NULL,
            count       integer[] NOT NULL,
            sum         double precision[] NOT NULL,
            min         double precision[] NOT NULL,
            max         double precision[] NOT NULL,
            first_off   bigint[] NOT NULL,
            first_value double precision[] NOT NULL,
            last_off    bigint[] NOT NULL,
            last_value  double precision[] NOT NULL,
            increase    double precision[],
            resets      integer[],
            PRIMARY KEY (series_id, start)
        ) PARTITION BY RANGE (start)$f$, chunk_table);
    EXECUTE format('ALTER TABLE perfwatch.%I ALTER COLUMN slots SET STORAGE MAIN, ALTER COLUMN count SET STORAGE MAIN, '
                   'ALTER COLUMN sum SET STORAGE MAIN, ALTER COLUMN min SET STORAGE MAIN, '
                   'ALTER COLUMN max SET STORAGE MAIN, ALTER COLUMN first_off SET STORAGE MAIN, '
                   'ALTER COLUMN first_value SET STORAGE MAIN, ALTER COLUMN last_off SET STORAGE MAIN, '
                   'ALTER COLUMN last_value SET STORAGE MAIN, ALTER COLUMN increase SET STORAGE MAIN, '
                   'ALTER COLUMN resets SET STORAGE MAIN', chunk_table);
    BEGIN
        EXECUTE format('ALTER TABLE perfwatch.%I ALTER COLUMN sum SET COMPRESSION lz4, '
                       'ALTER COLUMN min SET COMPRESSION lz4, ALTER COLUMN max SET COMPRESSION lz4, '
                       'ALTER COLUMN first_value SET COMPRESSION lz4, ALTER COLUMN last_value SET COMPRESSION lz4, '
                       'ALTER COLUMN increase SET COMPRESSION lz4', chunk_table);
    EXCEPTION WHEN feature_not_supported THEN
        NULL;  -- pglz
    END;
    INSERT INTO perfwatch.tier (name, resolution, table_name, partition_width)
        VALUES (perfwatch.packed_level(p_tier), t.partition_width, chunk_table, t.partition_width);
END
$$;

-- The query of p_tier's buckets in [p_lo, p_hi) (bucket rows as merge_buckets_sql reads them, res
-- the tier's resolution in seconds): from the tier's table from its packed watermark on, from its
-- chunks before it. p_series as for raw_buckets_sql.
CREATE OR REPLACE FUNCTION perfwatch.tier_buckets_sql(p_tier text, p_lo timestamptz, p_hi timestamptz, p_series text)
    RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    t perfwatch.tier;
    packed perfwatch.tier;
    packed_before timestamptz;
    res double precision;
    only_series text := CASE WHEN p_series IS NULL THEN '' ELSE format(' AND series_id = ANY (%s)', p_series) END;
    parts text[] := '{}';
BEGIN
    SELECT * INTO t FROM perfwatch.tier WHERE name = p_tier;
    SELECT * INTO packed FROM perfwatch.tier WHERE name = perfwatch.packed_level(p_tier);
    packed_before := coalesce(packed.watermark, '-infinity');
    res := extract(epoch FROM t.resolution);
    IF p_hi > packed_before THEN
        parts := parts || format(
            'SELECT series_id, bucket, %L::double precision AS res, count, sum, min, max, first_ts, first_value, '
            'last_ts, last_value, increase, resets FROM perfwatch.%I WHERE bucket >= %L AND bucket < %L%s',
            res, t.table_name, greatest(p_lo, packed_before), p_hi, only_series);
    END IF;
    IF p_lo < packed_before THEN
        parts := parts || format($q$
            SELECT u.* FROM (
                SELECT c.series_id, c.start + e.slot * %1$L::interval AS bucket, %2$L::double precision AS res,
                       e.count, e.sum, e.min, e.max,
                       c.start + e.slot * %1$L::interval + e.first_off * interval '1 millisecond' AS first_ts,
                       e.first_value,
                       c.start + e.slot * %1$L::interval + e.last_off * interval '1 millisecond' AS last_ts,
                       e.last_value, e.increase, e.resets
                FROM perfwatch.%3$I c,
                     unnest(c.slots, c.count, c.sum, c.min, c.max, c.first_off, c.first_value, c.last_off,
                            c.last_value, c.increase, c.resets)
                         AS e(slot, count, sum, min, max, first_off, first_value, last_off, last_value, increase, resets)
                WHERE c.start >= %4$L AND c.start < %5$L%6$s) u
            WHERE u.bucket >= %7$L AND u.bucket < %5$L$q$,
            t.resolution, res, packed.table_name, perfwatch.bucket_floor(packed.resolution, p_lo),
            least(p_hi, packed_before), only_series, p_lo);
    END IF;
    IF cardinality(parts) = 0 THEN
        RETURN format('SELECT series_id, bucket, %L::double precision AS res, count, sum, min, max, first_ts, '
                      'first_value, last_ts, last_value, increase, resets FROM perfwatch.%I WHERE false',
                      res, t.table_name);
    END IF;
    RETURN array_to_string(parts, ' UNION ALL ');
END
$$;

-- Pack the tier buckets p_source yields (p_tier's columns) into its chunks; a bucket already in a
-- chunk is replaced (a bucket rolled up again). p_merge false: no chunk of these windows exists yet.
-- Returns the number of chunks written.
CREATE OR REPLACE FUNCTION perfwatch.pack_buckets(p_tier text, p_source text, p_merge boolean) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch SET work_mem = '64MB' AS $$
DECLARE
    t perfwatch.tier;
    packed perfwatch.tier;
    source_rows text := p_source;
    written bigint;
BEGIN
    SELECT * INTO t FROM perfwatch.tier WHERE name = p_tier;
    SELECT * INTO packed FROM perfwatch.tier WHERE name = perfwatch.packed_level(p_tier);
    IF p_merge THEN
        source_rows := format($q$
            SELECT DISTINCT ON (m.series_id, m.bucket) m.series_id, m.bucket, m.count, m.sum, m.min, m.max, m.first_ts,
                   m.first_value, m.last_ts, m.last_value, m.increase, m.resets
            FROM (SELECT s.series_id, s.bucket, s.count, s.sum, s.min, s.max, s.first_ts, s.first_value, s.last_ts,
                         s.last_value, s.increase, s.resets, 0 AS rank FROM (%1$s) s
                  UNION ALL
                  SELECT o.series_id, o.bucket, o.count, o.sum, o.min, o.max, o.first_ts, o.first_value, o.last_ts,
                         o.last_value, o.increase, o.resets, 1
                  FROM (%2$s) o
                  WHERE (o.series_id, perfwatch.bucket_floor(%3$L, o.bucket)) IN
                        (SELECT DISTINCT s.series_id, perfwatch.bucket_floor(%3$L, s.bucket) FROM (%1$s) s)) m
            ORDER BY m.series_id, m.bucket, m.rank$q$,
            p_source, perfwatch.tier_buckets_sql(p_tier, '-infinity', 'infinity', NULL), packed.resolution);
    END IF;
    EXECUTE format($q$
        INSERT INTO perfwatch.%1$I AS c (series_id, start, slots, count, sum, min, max, first_off, first_value,
                                         last_off, last_value, increase, resets)
        SELECT r.series_id, r.start,
               array_agg(r.slot ORDER BY r.bucket), array_agg(r.count ORDER BY r.bucket),
               array_agg(r.sum ORDER BY r.bucket), array_agg(r.min ORDER BY r.bucket),
               array_agg(r.max ORDER BY r.bucket), array_agg(r.first_off ORDER BY r.bucket),
               array_agg(r.first_value ORDER BY r.bucket), array_agg(r.last_off ORDER BY r.bucket),
               array_agg(r.last_value ORDER BY r.bucket),
               CASE WHEN bool_or(r.increase IS NOT NULL) THEN array_agg(r.increase ORDER BY r.bucket) END,
               CASE WHEN bool_or(r.resets IS NOT NULL) THEN array_agg(r.resets ORDER BY r.bucket) END
        FROM (SELECT s.*, w.start,
                     round(date_part('epoch', s.bucket - w.start) / %3$L)::integer AS slot,
                     round(date_part('epoch', s.first_ts - s.bucket) * 1000)::bigint AS first_off,
                     round(date_part('epoch', s.last_ts - s.bucket) * 1000)::bigint AS last_off
              FROM (%2$s) s, LATERAL (SELECT perfwatch.bucket_floor(%4$L, s.bucket) AS start) w) r
        GROUP BY r.series_id, r.start
        ON CONFLICT (series_id, start) DO UPDATE SET
            slots = excluded.slots, count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
            first_off = excluded.first_off, first_value = excluded.first_value, last_off = excluded.last_off,
            last_value = excluded.last_value, increase = excluded.increase, resets = excluded.resets
        $q$, packed.table_name, source_rows, extract(epoch FROM t.resolution), packed.resolution);
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$$;

-- One step of p_tier's compaction: pack its next window the tier has rolled past (behind the
-- watermark of packed_level(p_tier)), and queue the tier's partitions now wholly packed to be
-- dropped. Under the rollup lock (the rollups read and write the tier). lo = hi: nothing to do.
CREATE OR REPLACE FUNCTION perfwatch.compact_tier_next(p_tier text, OUT lo timestamptz, OUT hi timestamptz,
                                                       OUT chunks bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    t perfwatch.tier;
    packed perfwatch.tier;
    closed_before timestamptz;
    next_data timestamptz;
    has_chunks boolean;
BEGIN
    LOCK TABLE perfwatch.lock_rollup IN EXCLUSIVE MODE;
    SELECT * INTO t FROM perfwatch.tier WHERE name = p_tier;
    SELECT * INTO packed FROM perfwatch.tier WHERE name = perfwatch.packed_level(p_tier);
    IF packed IS NULL OR t.watermark IS NULL THEN
        RETURN;
    END IF;
    closed_before := perfwatch.bucket_floor(packed.resolution, t.watermark);
    lo := coalesce(packed.watermark,
                   (SELECT perfwatch.bucket_floor(packed.resolution, min(p.lo)) FROM perfwatch.partition p
                    WHERE p.tier = p_tier));
    IF lo IS NULL THEN
        RETURN;
    END IF;
    hi := lo;
    chunks := 0;
    IF lo < closed_before THEN
        SELECT perfwatch.bucket_floor(packed.resolution, min(p.lo)) INTO next_data
            FROM perfwatch.partition p WHERE p.tier = p_tier AND p.hi > compact_tier_next.lo;
        IF next_data IS NULL OR next_data >= closed_before THEN
            hi := closed_before;  -- nothing between: past the gap at once
        ELSE
            lo := greatest(lo, next_data);
            hi := lo + packed.resolution;
            PERFORM perfwatch.ensure_partition(packed.name, lo);
            EXECUTE format('SELECT EXISTS (SELECT FROM perfwatch.%I WHERE start >= %L AND start < %L)',
                           packed.table_name, lo, hi) INTO has_chunks;
            chunks := perfwatch.pack_buckets(p_tier,
                format('SELECT series_id, bucket, count, sum, min, max, first_ts, first_value, last_ts, last_value, '
                       'increase, resets FROM perfwatch.%I WHERE bucket >= %L AND bucket < %L', t.table_name, lo, hi),
                has_chunks);
        END IF;
        UPDATE perfwatch.tier SET watermark = hi WHERE name = packed.name;
    END IF;
    PERFORM perfwatch.release_packed(p_tier, greatest(hi, packed.watermark));
END
$$;

GRANT EXECUTE ON FUNCTION
    perfwatch.packed_level(text),
    perfwatch.tier_buckets_sql(text, timestamptz, timestamptz, text)
TO perfwatch_grafana;
