-- Anomalies: each step of a series scored against that series' own past, for Grafana (role
-- perfwatch_grafana) and operators. Built on read.sql's series(), so the tiers serve it as they
-- serve every panel.
--
--   perfwatch.anomalies(metric, matchers, t_from, t_to, step, baseline, season, threshold, min_points, agg)
--       time, instance, labels, value, baseline_mean, baseline_stddev, baseline_points, z, anomalous
--
-- Semantics (tests/test_archive_anomalies.py computes the same from the raw samples):
-- * value: per series and step [t, t + step) of [t_from, t_to), the step's value as perfwatch.panel's
--   agg gives it (auto: rate for a counter, avg otherwise).
-- * baseline of a step t: the values of the same series at the steps t - k * season, k = 1, 2, ...,
--   that are not before t - baseline. Step '1 hour', season '1 day', baseline '30 days': the same hour
--   of the (UTC) day on each of the 30 days before. season NULL: every step of [t - baseline, t).
--   Steps without samples are not in it (a gap is no zero).
-- * baseline_mean, baseline_stddev: mean and sample standard deviation (stddev_samp) of those values;
--   baseline_points: how many there were.
-- * z = (value - baseline_mean) / baseline_stddev; anomalous = |z| > threshold.
--   Fewer than min_points baseline values (a new series, a gap, a baseline longer than the archive):
--   z and anomalous NULL, no verdict. A baseline that never moved (stddev 0): z NULL (undefined),
--   anomalous = whether the value differs from it at all.
-- Exactness: the values are exactly what series() answers (sum / count of the samples, rate from the
-- reset-corrected increase: the tiers keep both exactly). The spread is that of the step values, not
-- of the raw samples inside them (no tier keeps squares): a step of 1 hour has a smaller spread than
-- its 15 s samples, and z measures how unusual the hour is among hours.

CREATE OR REPLACE FUNCTION perfwatch.anomalies(metric text, matchers jsonb, t_from timestamptz, t_to timestamptz,
                                               step interval DEFAULT '1 hour', baseline interval DEFAULT '30 days',
                                               season interval DEFAULT '1 day', threshold double precision DEFAULT 3,
                                               min_points integer DEFAULT 7, agg text DEFAULT 'auto')
    RETURNS TABLE ("time" timestamptz, instance text, labels jsonb, value double precision,
                   baseline_mean double precision, baseline_stddev double precision, baseline_points integer,
                   z double precision, anomalous boolean)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    step_s numeric := extract(epoch FROM step);
    season_s numeric := extract(epoch FROM season);
    kind text;
BEGIN
    IF step_s IS NULL OR step_s <= 0 THEN
        RAISE EXCEPTION 'step must be a positive interval, not %', step;
    END IF;
    IF baseline IS NULL OR extract(epoch FROM baseline) < step_s THEN
        RAISE EXCEPTION 'baseline must be an interval of at least one step (%), not %', step, baseline;
    END IF;
    IF season IS NOT NULL AND (season_s <= 0 OR season_s % step_s <> 0 OR season > baseline) THEN
        RAISE EXCEPTION 'season must be NULL or a whole number of steps (%) no longer than baseline (%), not %',
            step, baseline, season;
    END IF;
    IF threshold IS NULL OR NOT (threshold > 0 AND threshold < 'Infinity') THEN  -- NaN sorts above Infinity
        RAISE EXCEPTION 'threshold must be a positive number of standard deviations, not %', threshold;
    END IF;
    IF min_points IS NULL OR min_points < 2 THEN
        RAISE EXCEPTION 'min_points must be 2 or more (a standard deviation needs two values), not %', min_points;
    END IF;
    SELECT m.kind INTO kind FROM perfwatch.metric m WHERE m.name = anomalies.metric;
    IF agg = 'auto' THEN
        agg := CASE WHEN kind = 'counter' THEN 'rate' ELSE 'avg' END;
    END IF;
    IF agg IS NULL OR agg NOT IN ('avg', 'min', 'max', 'last', 'rate', 'increase', 'samples') THEN
        RAISE EXCEPTION 'agg must be one of auto, avg, min, max, last, rate, increase, samples; not %', agg;
    END IF;
    -- One read of [t_from - baseline - step, t_to): the step more gives the oldest baseline step the
    -- pair of samples across its start (a counter's increase). The baseline is a window over the
    -- steps of the same series and phase (time modulo season): each step costs its baseline's length.
    RETURN QUERY
        WITH v AS (
            SELECT s.time, s.series_id, s.labels,
                   CASE agg WHEN 'avg' THEN s.avg WHEN 'min' THEN s.min WHEN 'max' THEN s.max WHEN 'last' THEN s.last
                            WHEN 'rate' THEN s.rate WHEN 'increase' THEN s.increase
                            ELSE s.samples::double precision END AS value
            FROM perfwatch.series(anomalies.metric, matchers, t_from - baseline - step, t_to, step) s
        ), scored AS (
            SELECT v.*, avg(v.value) OVER w AS mean, stddev_samp(v.value) OVER w AS sd, count(v.value) OVER w AS n
            FROM v
            WINDOW w AS (PARTITION BY v.series_id, CASE WHEN season_s IS NULL THEN 0
                                                        ELSE extract(epoch FROM v.time) % season_s END
                         ORDER BY v.time RANGE BETWEEN baseline PRECEDING AND '1 microsecond' PRECEDING)
        )
        SELECT sc.time, sc.labels ->> 'instance', sc.labels, sc.value, sc.mean, sc.sd, sc.n::integer,
               CASE WHEN sc.n >= min_points AND sc.sd > 0 THEN (sc.value - sc.mean) / sc.sd END,
               CASE WHEN sc.n < min_points OR sc.value IS NULL THEN NULL
                    WHEN sc.sd = 0 THEN sc.value <> sc.mean
                    ELSE abs(sc.value - sc.mean) / sc.sd > threshold END
        FROM scored sc
        WHERE sc.time >= perfwatch.bucket_floor(step, t_from)
        ORDER BY sc.time, sc.series_id;
END
$$;

GRANT EXECUTE ON FUNCTION
    perfwatch.anomalies(text, jsonb, timestamptz, timestamptz, interval, interval, interval, double precision,
                        integer, text)
TO perfwatch_grafana;
