-- The read side, for Grafana (role perfwatch_grafana) and operators. Buckets merge as
-- merge_buckets_sql (buckets.sql) says.
--
--   perfwatch.series(metric, matchers, t_from, t_to, step)  time, labels, avg/min/max/last, increase, rate
--   perfwatch.panel(metric, matchers, t_from, t_to, step, agg, legend)   time, metric (text), value
--   perfwatch.plan_tiers(t_from, t_to, step)                 which level serves which part of the range
--   perfwatch.tier_status()                                  per level: policy, watermark, lag, size, runs
--
-- Semantics (the tests compute the same from raw samples):
-- * Output buckets are [t, t + step) with t a multiple of step from the epoch, covering
--   [t_from, t_to) (both ends widened to whole steps).
-- * increase of a counter (or an untyped series: counter maths as PromQL's rate() applies them;
--   only a gauge has none) over a bucket = the sum, over consecutive samples a, b of the series with b
--   in the bucket and a inside the queried range, of b - a, or b where b < a (a reset). No
--   extrapolation, unlike PromQL's increase(); summing the buckets gives the increase over the range.
-- * rate = increase / step seconds (or the tier's resolution where a coarser tier had to serve a
--   period finer ones no longer hold).
-- * avg = sum / count of the samples, min, max, last = the last sample's value.

-- Prometheus-style matchers as jsonb: {"job": "node"} (equal), {"cpu": ["0", "1"]} (any of),
-- {"mode": {"=~": "user|system"}} with operators =, !=, =~, !~ (regexes anchored at both ends).
-- A label a series lacks matches as the empty string, as in PromQL.
CREATE OR REPLACE FUNCTION perfwatch.labels_match(labels jsonb, matchers jsonb) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    m record;
    op record;
    v text;
BEGIN
    IF matchers IS NULL OR matchers = 'null'::jsonb THEN
        RETURN true;
    END IF;
    IF jsonb_typeof(matchers) <> 'object' THEN
        RAISE EXCEPTION 'matchers must be a JSON object such as {"job": "node"}, not %', matchers;
    END IF;
    FOR m IN SELECT * FROM jsonb_each(matchers) LOOP
        v := coalesce(labels ->> m.key, '');
        CASE jsonb_typeof(m.value)
            WHEN 'string' THEN
                IF v <> m.value #>> '{}' THEN
                    RETURN false;
                END IF;
            WHEN 'array' THEN
                IF NOT EXISTS (SELECT FROM jsonb_array_elements_text(m.value) e WHERE e = v) THEN
                    RETURN false;
                END IF;
            WHEN 'object' THEN
                FOR op IN SELECT * FROM jsonb_each_text(m.value) LOOP
                    IF op.key = '=' AND v <> op.value
                       OR op.key = '!=' AND v = op.value
                       OR op.key = '=~' AND v !~ ('^(?:' || op.value || ')$')
                       OR op.key = '!~' AND v ~ ('^(?:' || op.value || ')$') THEN
                        RETURN false;
                    ELSIF op.key NOT IN ('=', '!=', '=~', '!~') THEN
                        RAISE EXCEPTION 'matcher for label % has unknown operator % (use =, !=, =~ or !~)', m.key, op.key;
                    END IF;
                END LOOP;
            ELSE
                RAISE EXCEPTION 'matcher for label % must be a string, a list of strings or an object like {"=~": "regex"}, not %',
                    m.key, m.value;
        END CASE;
    END LOOP;
    RETURN true;
END
$$;

-- Where each level of the active policy holds rolled-up (final) data: from its oldest partition
-- (moved up to the next tier's bucket grid, so that stitching never splits a coarser bucket) to
-- its watermark (raw: open-ended).
CREATE OR REPLACE FUNCTION perfwatch.tier_coverage()
    RETURNS TABLE (level integer, tier text, table_name text, resolution interval, lo timestamptz, hi timestamptz)
    LANGUAGE sql STABLE SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        SELECT p.level, t.name, t.table_name, t.resolution,
               perfwatch.bucket_ceil(coalesce(nt.resolution, '1 microsecond'),
                                     (SELECT min(pa.lo) FROM perfwatch.level_partitions(t.name) pa)),
               CASE WHEN p.level = 0 THEN 'infinity'::timestamptz ELSE t.watermark END
        FROM perfwatch.archive_policy p
        JOIN perfwatch.tier t ON t.name = p.tier
        LEFT JOIN perfwatch.archive_policy np ON np.level = p.level + 1
        LEFT JOIN perfwatch.tier nt ON nt.name = np.tier
        ORDER BY p.level;
    END;

-- Which level serves which part of [t_from, t_to) for a given step. The main level is the coarsest
-- whose resolution divides the step (raw always does); the recent part it has not rolled up yet
-- comes from finer levels, the old part it no longer holds from coarser ones.
CREATE OR REPLACE FUNCTION perfwatch.plan_tiers(t_from timestamptz, t_to timestamptz, step interval)
    RETURNS TABLE (level integer, tier text, table_name text, resolution interval, lo timestamptz, hi timestamptz)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    step_s numeric := extract(epoch FROM step);
    main integer;
    c record;
    want tstzmultirange;
    piece tstzmultirange;
    r tstzrange;
BEGIN
    IF step_s IS NULL OR step_s <= 0 THEN
        RAISE EXCEPTION 'step must be a positive interval, not %', step;
    END IF;
    want := tstzmultirange(tstzrange(perfwatch.bucket_floor(step, t_from), perfwatch.bucket_ceil(step, t_to)));
    SELECT max(tc.level) INTO main FROM perfwatch.tier_coverage() tc
        WHERE tc.level = 0 OR step_s % extract(epoch FROM tc.resolution) = 0;
    FOR c IN SELECT * FROM perfwatch.tier_coverage() tc
             ORDER BY CASE WHEN tc.level <= main THEN main - tc.level ELSE tc.level END LOOP
        IF c.lo IS NULL OR c.hi IS NULL OR c.lo >= c.hi THEN
            CONTINUE;
        END IF;
        piece := want * tstzmultirange(tstzrange(c.lo, c.hi));
        want := want - piece;
        FOR r IN SELECT unnest(piece) LOOP
            level := c.level;
            tier := c.tier;
            table_name := c.table_name;
            resolution := c.resolution;
            lo := lower(r);
            hi := upper(r);
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;

-- The bucket rows (raw_buckets_sql's and tier_buckets_sql's shape) of the series p_series (an SQL
-- expression for an integer[], e.g. '$1') over [t_from, t_to), each part from the level plan_tiers
-- picks for step; NULL when no level holds any of the range.
CREATE OR REPLACE FUNCTION perfwatch.planned_buckets_sql(t_from timestamptz, t_to timestamptz, step interval,
                                                         p_series text)
    RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    seg record;
    parts text[] := '{}';
BEGIN
    FOR seg IN SELECT * FROM perfwatch.plan_tiers(t_from, t_to, step) LOOP
        parts := parts || CASE WHEN seg.level = 0 THEN perfwatch.raw_buckets_sql(seg.lo, seg.hi, p_series)
                               ELSE perfwatch.tier_buckets_sql(seg.tier, seg.lo, seg.hi, p_series) END;
    END LOOP;
    RETURN CASE WHEN cardinality(parts) > 0 THEN array_to_string(parts, ' UNION ALL ') END;
END
$$;

CREATE OR REPLACE FUNCTION perfwatch.series(metric text, matchers jsonb, t_from timestamptz, t_to timestamptz, step interval)
    RETURNS TABLE ("time" timestamptz, series_id integer, labels jsonb, avg double precision, min double precision,
                   max double precision, last double precision, samples bigint, increase double precision,
                   rate double precision, resets bigint)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    m perfwatch.metric;
    ids integer[];
    source text;
BEGIN
    SELECT * INTO m FROM perfwatch.metric WHERE name = series.metric;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Non-empty equality matchers first narrow the series through the GIN index on labels ("" also
    -- matches a series without the label, which @> would not).
    SELECT array_agg(s.id) INTO ids FROM perfwatch.series s
        WHERE s.metric_id = m.id
          AND s.labels @> coalesce((SELECT jsonb_object_agg(e.key, e.value)
                                    FROM jsonb_each(CASE WHEN jsonb_typeof(series.matchers) = 'object'
                                                         THEN series.matchers END) e
                                    WHERE jsonb_typeof(e.value) = 'string' AND e.value <> '""'), '{}')
          AND perfwatch.labels_match(s.labels, series.matchers);
    IF ids IS NULL THEN
        RETURN;
    END IF;
    source := perfwatch.planned_buckets_sql(t_from, t_to, step, '$3');
    IF source IS NULL THEN
        RETURN;
    END IF;
    -- Every pair of consecutive samples inside the range counts (p_pairs_across), in the step of
    -- its later sample.
    RETURN QUERY EXECUTE format($q$
        SELECT g.bucket, g.series_id, s.labels, g.sum / g.count, g.min, g.max, g.last_value, g.count::bigint,
               CASE WHEN $1 THEN g.increase END, CASE WHEN $1 THEN g.increase / greatest($2, g.res) END,
               CASE WHEN $1 THEN g.resets::bigint END
        FROM (%s) g JOIN perfwatch.series s ON s.id = g.series_id
        ORDER BY g.bucket, g.series_id
        $q$, perfwatch.merge_buckets_sql(source, step, true))
        USING m.kind <> 'gauge', extract(epoch FROM step)::double precision, ids;
END
$$;

-- Prometheus' remote_read (perfwatch/archiver/remoteread.py) in two steps:
--   perfwatch.match_series(matchers)                          the series selected, metric name included
--   perfwatch.read_samples(ids, t_from, t_to, resolution)    their samples, or tier buckets, in time order
-- The series whose labels, with the metric name as __name__, match every element of p_matchers: an
-- array of labels_match matchers, one per Prometheus matcher (two on one label stay two).
CREATE OR REPLACE FUNCTION perfwatch.match_series(p_matchers jsonb)
    RETURNS TABLE (series_id integer, metric text, kind text, labels jsonb)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    names text[];
    equal jsonb;
BEGIN
    IF jsonb_typeof(p_matchers) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'matchers must be a JSON array of matchers such as [{"job": "node"}], not %', p_matchers;
    END IF;
    -- Equality on the name narrows to its metrics, non-empty equality on labels through the GIN index.
    SELECT array_agg(e -> '__name__' #>> '{}') INTO names FROM jsonb_array_elements(p_matchers) e
        WHERE jsonb_typeof(e -> '__name__') = 'string';
    SELECT coalesce(jsonb_object_agg(k.key, k.value), '{}') INTO equal
        FROM jsonb_array_elements(p_matchers) e, jsonb_each(e) k
        WHERE k.key <> '__name__' AND jsonb_typeof(k.value) = 'string' AND k.value <> '""';
    RETURN QUERY
        SELECT s.id, m.name, m.kind, s.labels
        FROM perfwatch.metric m JOIN perfwatch.series s ON s.metric_id = m.id
        WHERE (names IS NULL OR m.name = ALL (names))
          AND s.labels @> equal
          AND NOT EXISTS (SELECT FROM jsonb_array_elements(p_matchers) e
                          WHERE NOT perfwatch.labels_match(s.labels || jsonb_build_object('__name__', m.name), e))
        ORDER BY s.id;
END
$$;

-- The samples of series p_ids in [t_from, t_to] (both ends included, as remote_read asks), or, where
-- p_resolution is a tier's, that tier's buckets, with the finer levels for what it has not rolled
-- up yet and the coarser for what it no longer holds (plan_tiers). A sample is a bucket of one
-- (level raw). ts is the time of the bucket's last sample; increase is the bucket's own (pairs
-- inside it), NULL for a gauge. Ordered by series, then time.
CREATE OR REPLACE FUNCTION perfwatch.read_samples(p_ids integer[], t_from timestamptz, t_to timestamptz,
                                                  p_resolution interval)
    RETURNS TABLE (series_id integer, level text, ts timestamptz, count integer, sum double precision,
                   min double precision, max double precision, first_value double precision,
                   last_value double precision, increase double precision)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    seg record;
    parts text[] := '{}';
    hi timestamptz := t_to + interval '1 millisecond';
BEGIN
    FOR seg IN SELECT * FROM perfwatch.plan_tiers(t_from, hi, p_resolution) LOOP
        parts := parts || format('SELECT %L AS level, b.* FROM (%s) b', seg.tier,
                                 CASE WHEN seg.level = 0 THEN perfwatch.raw_buckets_sql(seg.lo, seg.hi, '$1')
                                      ELSE perfwatch.tier_buckets_sql(seg.tier, seg.lo, seg.hi, '$1') END);
    END LOOP;
    IF cardinality(parts) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format($q$
        SELECT r.series_id, r.level, r.last_ts, r.count, r.sum, r.min, r.max, r.first_value, r.last_value,
               r.increase::double precision
        FROM (%s) r
        WHERE r.last_ts >= $2 AND r.last_ts < $3
        ORDER BY r.series_id, r.last_ts
        $q$, array_to_string(parts, ' UNION ALL ')) USING p_ids, t_from, hi;
END
$$;

-- A legend template such as '{{cpu}}/{{mode}}' filled from a series' labels (a label it lacks
-- gives ''); without a template, the labels as {name="value", ...}.
CREATE OR REPLACE FUNCTION perfwatch.format_legend(template text, labels jsonb) RETURNS text
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    l record;
    result text := template;
BEGIN
    IF template IS NULL THEN
        RETURN (SELECT '{' || coalesce(string_agg(format('%s=%s', e.key, to_jsonb(e.value)::text), ', ' ORDER BY e.key), '')
                       || '}'
                FROM jsonb_each_text(labels) e);
    END IF;
    FOR l IN SELECT * FROM jsonb_each_text(labels) LOOP
        result := replace(result, '{{' || l.key || '}}', l.value);
    END LOOP;
    RETURN regexp_replace(result, '\{\{[^}]*\}\}', '', 'g');
END
$$;

-- For a Grafana panel: one value column and the series named by a text column (Grafana's
-- "metric" column), sorted by time.
--   agg:    auto (rate for counters, avg for gauges), avg, min, max, last, rate, increase, samples
--   legend: a template such as '{{cpu}}/{{mode}}'; default: the labels as {name="value", ...}
CREATE OR REPLACE FUNCTION perfwatch.panel(metric_name text, matchers jsonb, t_from timestamptz, t_to timestamptz, step interval,
                                agg text DEFAULT 'auto', legend text DEFAULT NULL)
    RETURNS TABLE ("time" timestamptz, metric text, value double precision)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    kind text;
BEGIN
    SELECT m.kind INTO kind FROM perfwatch.metric m WHERE m.name = metric_name;
    IF agg = 'auto' THEN
        agg := CASE WHEN kind = 'counter' THEN 'rate' ELSE 'avg' END;
    END IF;
    IF agg NOT IN ('avg', 'min', 'max', 'last', 'rate', 'increase', 'samples') THEN
        RAISE EXCEPTION 'agg must be one of auto, avg, min, max, last, rate, increase, samples; not %', agg;
    END IF;
    RETURN QUERY
        SELECT s.time, perfwatch.format_legend(legend, s.labels),
               CASE agg WHEN 'avg' THEN s.avg WHEN 'min' THEN s.min WHEN 'max' THEN s.max WHEN 'last' THEN s.last
                        WHEN 'rate' THEN s.rate WHEN 'increase' THEN s.increase ELSE s.samples::double precision END
        FROM perfwatch.series(metric_name, matchers, t_from, t_to, step) s
        ORDER BY 1, 2;
END
$$;

-- Per level of the active policy: its policy, how far its rollup is (watermark, lag), how much it
-- holds (partitions, oldest/newest, rows estimated by the statistics, bytes on disk with
-- indexes) and its last rollup and retention runs.
CREATE OR REPLACE FUNCTION perfwatch.tier_status(p_now timestamptz DEFAULT now())
    RETURNS TABLE (level integer, tier text, table_name text, resolution interval, retention interval,
                   watermark timestamptz, lag_seconds double precision, horizon timestamptz, partitions integer,
                   oldest timestamptz, newest timestamptz, rows_estimate bigint, bytes bigint,
                   bytes_per_row double precision, dirty_ranges bigint,
                   last_rollup_at timestamptz, last_rollup_seconds double precision, last_rollup_rows bigint,
                   last_retention_at timestamptz, last_retention_seconds double precision,
                   last_retention_dropped integer, last_retention_waiting integer)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    r record;
    time_col text;
    part text;
BEGIN
    FOR r IN SELECT p.*, t.table_name AS tbl, t.watermark AS wm, t.horizon AS hz
             FROM perfwatch.archive_policy p JOIN perfwatch.tier t ON t.name = p.tier ORDER BY p.level LOOP
        level := r.level;
        tier := r.tier;
        table_name := r.tbl;
        resolution := r.resolution;
        retention := r.retention;
        watermark := r.wm;
        lag_seconds := CASE WHEN r.level > 0 THEN extract(epoch FROM p_now - r.wm) END;
        horizon := r.hz;
        SELECT count(*), min(pa.lo),
               sum(pg_stat_get_live_tuples(to_regclass('perfwatch.' || quote_ident(pa.table_name)))),
               sum(pg_total_relation_size(to_regclass('perfwatch.' || quote_ident(pa.table_name))))
          INTO partitions, oldest, rows_estimate, bytes
          FROM perfwatch.level_partitions(r.tier) pa;
        IF r.level = 0 THEN
            -- raw rows: the head's samples, the late ones and the chunks (a row each)
            rows_estimate := coalesce(rows_estimate, 0) + pg_stat_get_live_tuples('perfwatch.sample_late'::regclass);
            bytes := coalesce(bytes, 0) + pg_total_relation_size('perfwatch.sample_late');
        END IF;
        bytes_per_row := CASE WHEN rows_estimate > 0 THEN bytes::double precision / rows_estimate END;
        -- newest: in the newest partition that holds anything (not ahead of now), one backward
        -- probe of the primary key per series; status runs after every rollup pass, so no scans
        time_col := CASE WHEN r.level = 0 THEN 'ts' ELSE 'bucket' END;
        newest := NULL;
        FOR part IN SELECT pa.table_name FROM perfwatch.partition pa WHERE pa.tier = r.tier AND pa.lo <= p_now
                    ORDER BY pa.lo DESC LOOP
            EXECUTE format('SELECT max(l.m) FROM perfwatch.series s, LATERAL (SELECT max(x.%1$I) AS m '
                           'FROM perfwatch.%2$I x WHERE x.series_id = s.id) l', time_col, part) INTO newest;
            EXIT WHEN newest IS NOT NULL;
        END LOOP;
        SELECT count(*) INTO dirty_ranges FROM perfwatch.rollup_dirty d WHERE d.tier = r.tier;
        last_rollup_at := r.last_rollup_at;
        last_rollup_seconds := r.last_rollup_seconds;
        last_rollup_rows := r.last_rollup_rows;
        last_retention_at := r.last_retention_at;
        last_retention_seconds := r.last_retention_seconds;
        last_retention_dropped := r.last_retention_dropped;
        last_retention_waiting := r.last_retention_waiting;
        RETURN NEXT;
    END LOOP;
END
$$;

GRANT EXECUTE ON FUNCTION
    perfwatch.labels_match(jsonb, jsonb),
    perfwatch.tier_coverage(),
    perfwatch.plan_tiers(timestamptz, timestamptz, interval),
    perfwatch.planned_buckets_sql(timestamptz, timestamptz, interval, text),
    perfwatch.series(text, jsonb, timestamptz, timestamptz, interval),
    perfwatch.panel(text, jsonb, timestamptz, timestamptz, interval, text, text),
    perfwatch.tier_status(timestamptz),
    perfwatch.format_legend(text, jsonb),
    perfwatch.match_series(jsonb),
    perfwatch.read_samples(integer[], timestamptz, timestamptz, interval)
TO perfwatch_grafana;
