-- Alert history for Grafana (role perfwatch_grafana) and operators, over perfwatch.alert_occurrence
-- (schema 0008, written by the archiver's Alertmanager webhook).
--
--   perfwatch.alert_history(t_from, t_to, matchers)          one row per occurrence overlapping the range
--   perfwatch.alerts_over_time(t_from, t_to, step, matchers) time, alertname, firing (occurrences per bucket)
--   perfwatch.alerts_firing(at, matchers)                    the occurrences firing at `at`
--   perfwatch.alert_resolve_times(t_from, t_to, matchers)    per alertname and instance: mean and p90
--   perfwatch.alerts_most_frequent(t_from, t_to, matchers, top)
--
-- An occurrence spans [starts_at, ends_at), ends_at NULL while firing (open-ended). It overlaps
-- [t_from, t_to) when starts_at < t_to and (ends_at IS NULL or ends_at > t_from). `matchers` are
-- read.sql's labels_match matchers over the alert's labels (NULL: every alert). plpgsql, so
-- labels_match (read.sql, applied after this file) is looked up when called.

CREATE OR REPLACE FUNCTION perfwatch.alert_history(t_from timestamptz, t_to timestamptz, matchers jsonb DEFAULT NULL)
    RETURNS TABLE (alertname text, labels jsonb, starts_at timestamptz, ends_at timestamptz, severity text,
                   instance text, annotations jsonb, duration_seconds double precision, firing boolean,
                   summary text, fingerprint text, receiver text, generator_url text,
                   last_notified_at timestamptz, notifications integer)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    -- duration_seconds: ends_at - starts_at, or, while firing, now() - starts_at (so far).
    RETURN QUERY
        SELECT o.alertname, o.labels, o.starts_at, o.ends_at, o.labels ->> 'severity', o.labels ->> 'instance',
               o.annotations, extract(epoch FROM coalesce(o.ends_at, now()) - o.starts_at)::double precision,
               o.ends_at IS NULL, coalesce(o.annotations ->> 'summary', o.annotations ->> 'description'),
               o.fingerprint, o.receiver, o.generator_url, o.last_notified_at, o.notifications
        FROM perfwatch.alert_occurrence o
        WHERE o.starts_at < t_to AND (o.ends_at IS NULL OR o.ends_at > t_from)
          AND (matchers IS NULL OR perfwatch.labels_match(o.labels, matchers))
        ORDER BY o.starts_at DESC, o.fingerprint;
END
$$;

-- Occurrences firing at any moment of each bucket [t, t + step), t a multiple of step from the epoch,
-- per alertname; 0 where none fired (a gapless series for Grafana), sorted by time.
CREATE OR REPLACE FUNCTION perfwatch.alerts_over_time(t_from timestamptz, t_to timestamptz, step interval,
                                                      matchers jsonb DEFAULT NULL)
    RETURNS TABLE ("time" timestamptz, alertname text, firing bigint)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    s numeric := extract(epoch FROM step);
BEGIN
    IF s IS NULL OR s <= 0 THEN
        RAISE EXCEPTION 'step must be a positive interval, not %', step;
    END IF;
    RETURN QUERY
        WITH occ AS (
            SELECT coalesce(h.alertname, '') AS name, h.starts_at, h.ends_at
            FROM perfwatch.alert_history(t_from, t_to, matchers) h
        ), buckets AS (
            SELECT to_timestamp(b::double precision) AS lo, to_timestamp((b + s)::double precision) AS hi
            FROM generate_series(floor(extract(epoch FROM t_from) / s) * s, extract(epoch FROM t_to) - s / 1000000, s) b
        )
        SELECT b.lo, n.name, count(o.starts_at)
        FROM buckets b
        CROSS JOIN (SELECT DISTINCT occ.name FROM occ) n
        LEFT JOIN occ o ON o.name = n.name AND o.starts_at < b.hi AND (o.ends_at IS NULL OR o.ends_at > b.lo)
        GROUP BY b.lo, n.name
        ORDER BY b.lo, n.name;
END
$$;

-- The occurrences firing at `at`: started at or before it and not resolved by then.
CREATE OR REPLACE FUNCTION perfwatch.alerts_firing(at timestamptz DEFAULT now(), matchers jsonb DEFAULT NULL)
    RETURNS TABLE (alertname text, severity text, instance text, starts_at timestamptz,
                   firing_seconds double precision, summary text, labels jsonb, annotations jsonb,
                   last_notified_at timestamptz)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    RETURN QUERY
        SELECT o.alertname, o.labels ->> 'severity', o.labels ->> 'instance', o.starts_at,
               extract(epoch FROM at - o.starts_at)::double precision,
               coalesce(o.annotations ->> 'summary', o.annotations ->> 'description'), o.labels, o.annotations,
               o.last_notified_at
        FROM perfwatch.alert_occurrence o
        WHERE o.starts_at <= at AND (o.ends_at IS NULL OR o.ends_at > at)
          AND (matchers IS NULL OR perfwatch.labels_match(o.labels, matchers))
        ORDER BY o.starts_at, o.alertname, o.fingerprint;
END
$$;

-- Time to resolve (ends_at - starts_at) of the occurrences resolved within [t_from, t_to), per
-- alertname and instance label (NULL where the alert has none): mean, p90 (percentile_cont:
-- interpolated between the two nearest), max.
CREATE OR REPLACE FUNCTION perfwatch.alert_resolve_times(t_from timestamptz, t_to timestamptz,
                                                         matchers jsonb DEFAULT NULL)
    RETURNS TABLE (alertname text, instance text, resolved bigint, mean_seconds double precision,
                   p90_seconds double precision, max_seconds double precision)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    RETURN QUERY
        SELECT o.alertname, o.labels ->> 'instance', count(*),
               avg(d), percentile_cont(0.9) WITHIN GROUP (ORDER BY d), max(d)
        FROM perfwatch.alert_occurrence o,
             LATERAL (SELECT extract(epoch FROM o.ends_at - o.starts_at)::double precision AS d) x
        WHERE o.ends_at >= t_from AND o.ends_at < t_to
          AND (matchers IS NULL OR perfwatch.labels_match(o.labels, matchers))
        GROUP BY 1, 2
        ORDER BY 4 DESC, 1, 2;
END
$$;

-- The alerts that started most often within [t_from, t_to): occurrences, instances they fired on,
-- and their firing time within the range (each occurrence clipped to it; firing ones up to
-- min(now(), t_to)).
CREATE OR REPLACE FUNCTION perfwatch.alerts_most_frequent(t_from timestamptz, t_to timestamptz,
                                                          matchers jsonb DEFAULT NULL, top integer DEFAULT 10)
    RETURNS TABLE (alertname text, occurrences bigint, instances bigint, firing_seconds double precision,
                   last_started_at timestamptz)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    RETURN QUERY
        SELECT o.alertname, count(*), count(DISTINCT o.labels ->> 'instance'),
               sum(extract(epoch FROM least(coalesce(o.ends_at, now()), now(), t_to) - o.starts_at))::double precision,
               max(o.starts_at)
        FROM perfwatch.alert_occurrence o
        WHERE o.starts_at >= t_from AND o.starts_at < t_to
          AND (matchers IS NULL OR perfwatch.labels_match(o.labels, matchers))
        GROUP BY 1
        ORDER BY 2 DESC, 4 DESC, 1
        LIMIT top;
END
$$;

GRANT EXECUTE ON FUNCTION
    perfwatch.alert_history(timestamptz, timestamptz, jsonb),
    perfwatch.alerts_over_time(timestamptz, timestamptz, interval, jsonb),
    perfwatch.alerts_firing(timestamptz, jsonb),
    perfwatch.alert_resolve_times(timestamptz, timestamptz, jsonb),
    perfwatch.alerts_most_frequent(timestamptz, timestamptz, jsonb, integer)
TO perfwatch_grafana;
