-- Forecasts: a least-squares line through what a capacity has used over a lookback window, and when
-- it reaches the capacity ("days until full"), for Grafana (role perfwatch_grafana) and operators.
-- The archive's side of PromQL's predict_linear(): the same line, over weeks the tiers keep.
--
--   perfwatch.forecast_full(size_metric, avail_metric, matchers, t_from, t_to, step)
--       instance, labels, size, used, used_fitted, slope_per_day, days_until_full, full_at, r2, points
--   perfwatch.filesystem_forecast(matchers, t_from, t_to, step)    node_filesystem_size_bytes - _avail_bytes,
--       per device, mountpoint and fstype (the columns above after instance, device, mountpoint, fstype)
--   perfwatch.memory_forecast(matchers, t_from, t_to, step)        node_memory_MemTotal_bytes - _MemAvailable_bytes
--
-- Semantics (tests/test_archive_anomalies.py checks them against Prometheus' predict_linear):
-- * used = size - avail, per series of avail_metric and the series of size_metric with the same labels,
--   per step of [t_from, t_to) (widened to whole steps, as perfwatch.series()): each metric's avg over
--   the step (sum / count), at the time midway between the step's first and last avail sample.
-- * the line: ordinary least squares of used on time over those points (regr_slope, regr_intercept,
--   regr_r2 and regr_count; one point per step, each step weighing the same).
-- * used_fitted: the line at t_to (what predict_linear(avail[...], 0) gives, subtracted from size);
--   slope_per_day: its slope in bytes a day; size, used: the last step's.
-- * days_until_full = (size - used_fitted) / slope_per_day, 0 when the line is past size already;
--   full_at = t_to + that. Both NULL when used is not growing (slope <= 0) or fewer than 2 steps
--   have both metrics; full_at also NULL beyond 30,000 years.
-- Exactness: where the step is served by raw samples each point is a sample and the line is
-- predict_linear's over the same samples. From a tier, a step's avg and its first and last sample
-- times are exact, and for samples evenly spaced inside a step the avg of a linear series lies on the
-- line at the midpoint: a steady fill gives the same line from any tier. Otherwise the line through
-- step averages differs from the one through the raw samples (steps with fewer samples weigh as much).

CREATE OR REPLACE FUNCTION perfwatch.forecast_full(size_metric text, avail_metric text, matchers jsonb,
                                                   t_from timestamptz, t_to timestamptz,
                                                   step interval DEFAULT '1 hour')
    RETURNS TABLE (instance text, labels jsonb, size double precision, used double precision,
                   used_fitted double precision, slope_per_day double precision, days_until_full double precision,
                   full_at timestamptz, r2 double precision, points integer)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    ids integer[];
    source text;
BEGIN
    IF size_metric IS NULL OR avail_metric IS NULL THEN
        RAISE EXCEPTION 'size_metric and avail_metric must name metrics, not %, %', size_metric, avail_metric;
    END IF;
    IF matchers IS NOT NULL AND jsonb_typeof(matchers) <> 'object' THEN
        RAISE EXCEPTION 'matchers must be a JSON object such as {"job": "node"}, not %', matchers;
    END IF;
    IF t_from IS NULL OR t_to IS NULL OR t_from >= t_to THEN
        RAISE EXCEPTION 't_from must be before t_to, not % and %', t_from, t_to;
    END IF;
    IF step IS NULL OR extract(epoch FROM step) <= 0 THEN
        RAISE EXCEPTION 'step must be a positive interval, not %', step;
    END IF;
    SELECT array_agg(ms.series_id) INTO ids
        FROM unnest(ARRAY[size_metric, avail_metric]) n(name),
             perfwatch.match_series(jsonb_build_array(coalesce(matchers, '{}') || jsonb_build_object('__name__', n.name))) ms;
    IF ids IS NULL THEN
        RETURN;
    END IF;
    source := perfwatch.planned_buckets_sql(t_from, t_to, step, '$1');
    IF source IS NULL THEN
        RETURN;
    END IF;
    -- x: seconds from t_to, so that the intercept is the line at t_to and the sums stay small. The two
    -- metrics' steps of a label set are grouped together, not joined: a join on the labels was planned
    -- as a nested loop over the steps (seconds for a few filesystems).
    RETURN QUERY EXECUTE format($q$
        WITH b AS (
            SELECT g.*, s.labels, m.name
            FROM (%s) g JOIN perfwatch.series s ON s.id = g.series_id JOIN perfwatch.metric m ON m.id = s.metric_id
        ), p AS (
            SELECT b.labels, b.bucket, max(b.sum / b.count) FILTER (WHERE b.name = $3) AS size,
                   max(b.sum / b.count) FILTER (WHERE b.name = $3) - max(b.sum / b.count) FILTER (WHERE b.name = $4)
                       AS used,
                   max(extract(epoch FROM b.first_ts + (b.last_ts - b.first_ts) / 2 - $2)::double precision)
                       FILTER (WHERE b.name = $4) AS x
            FROM b GROUP BY b.labels, b.bucket
        ), fit AS (
            SELECT p.labels, (array_agg(p.size ORDER BY p.bucket DESC) FILTER (WHERE p.used IS NOT NULL))[1] AS size,
                   (array_agg(p.used ORDER BY p.bucket DESC) FILTER (WHERE p.used IS NOT NULL))[1] AS used,
                   regr_intercept(p.used, p.x) AS fitted, regr_slope(p.used, p.x) AS slope, regr_r2(p.used, p.x) AS r2,
                   regr_count(p.used, p.x)::integer AS n
            FROM p GROUP BY p.labels HAVING count(p.used) > 0
        ), days AS (
            SELECT f.*, CASE WHEN f.slope > 0 THEN greatest(f.size - f.fitted, 0) / f.slope END AS secs FROM fit f
        )
        SELECT d.labels ->> 'instance', d.labels, d.size, d.used, d.fitted, d.slope * 86400, d.secs / 86400,
               CASE WHEN d.secs < 1e12 THEN $2 + make_interval(secs => d.secs) END, d.r2, d.n
        FROM days d
        ORDER BY d.secs NULLS LAST, d.labels
        $q$, perfwatch.merge_buckets_sql(source, step, false))
        USING ids, t_to, size_metric, avail_metric;
END
$$;

CREATE OR REPLACE FUNCTION perfwatch.filesystem_forecast(matchers jsonb, t_from timestamptz, t_to timestamptz,
                                                         step interval DEFAULT '1 hour')
    RETURNS TABLE (instance text, device text, mountpoint text, fstype text, labels jsonb, size double precision,
                   used double precision, used_fitted double precision, slope_per_day double precision,
                   days_until_full double precision, full_at timestamptz, r2 double precision, points integer)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    RETURN QUERY
        SELECT f.instance, f.labels ->> 'device', f.labels ->> 'mountpoint', f.labels ->> 'fstype', f.labels, f.size,
               f.used, f.used_fitted, f.slope_per_day, f.days_until_full, f.full_at, f.r2, f.points
        FROM perfwatch.forecast_full('node_filesystem_size_bytes', 'node_filesystem_avail_bytes', matchers,
                                     t_from, t_to, step) f;
END
$$;

CREATE OR REPLACE FUNCTION perfwatch.memory_forecast(matchers jsonb, t_from timestamptz, t_to timestamptz,
                                                     step interval DEFAULT '1 hour')
    RETURNS TABLE (instance text, labels jsonb, size double precision, used double precision,
                   used_fitted double precision, slope_per_day double precision, days_until_full double precision,
                   full_at timestamptz, r2 double precision, points integer)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    RETURN QUERY SELECT * FROM perfwatch.forecast_full('node_memory_MemTotal_bytes', 'node_memory_MemAvailable_bytes',
                                                       matchers, t_from, t_to, step);
END
$$;

GRANT EXECUTE ON FUNCTION
    perfwatch.forecast_full(text, text, jsonb, timestamptz, timestamptz, interval),
    perfwatch.filesystem_forecast(jsonb, timestamptz, timestamptz, interval),
    perfwatch.memory_forecast(jsonb, timestamptz, timestamptz, interval)
TO perfwatch_grafana;
