-- Host inventory and drift, for Grafana (role perfwatch_grafana) and operators, from the info series
-- node exporters expose (node_exporter's names): node_uname_info, node_os_info and node_cpu_info.
--
--   perfwatch.hosts(t_from, t_to, matchers)                 a row per host seen in [t_from, t_to]
--   perfwatch.host_changes(t_from, t_to, matchers, step)    a row per info label that changed
--
-- A host is an (instance, job) with a node_uname_info or node_os_info series; matchers are
-- labels_match matchers (read.sql) over the info series' labels (e.g. {"job": "node"}).
--
-- Why samples and not the catalog alone: a label change makes a new series, but a change back
-- (A -> B -> A) reuses the old one, so first_seen says when a value was first seen, never when it
-- came back; and series.last_seen is only refreshed hourly (store.py). So:
-- * last_seen is the time of the host's newest info sample in the range (exact: a tier bucket keeps
--   the time of its last sample). It is read from the hour before the catalog's last_seen on, as
--   the store refreshes that at most an hour after a sample; only where nothing is there (a range
--   that ends before it) is the rest of the range read, at 1-hour buckets.
-- * first_seen is the catalog's first_seen of the host's oldest info series: exact to the scrape,
--   and kept when retention has dropped the sample itself.
-- * changes come from the samples of the series that share a slot (host, info metric and, for
--   node_cpu_info, the cpu label) with another series: slots with one series never changed and
--   cost nothing to read.

-- The time of the newest sample in [t_from, t_to] of each series p_ids (none: no row).
CREATE OR REPLACE FUNCTION perfwatch.last_sample_at(p_ids integer[], t_from timestamptz, t_to timestamptz)
    RETURNS TABLE (series_id integer, ts timestamptz)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    g record;
BEGIN
    -- Series grouped by where their newest sample can be (an hour before last_seen, on the hour),
    -- so that the hosts reporting now share one short read. That read asks for raw samples (a step
    -- no tier divides), where raw has them: a tier bucket that t_to cuts is left out (its last
    -- sample may be after t_to), so where only the tiers hold t_to's hour the answer is the last
    -- sample of the last bucket that ends before t_to. Before that hour, hourly buckets suffice (they
    -- keep the time of their last sample).
    FOR g IN SELECT perfwatch.bucket_floor('1 hour', greatest(t_from, least(s.last_seen, t_to) - interval '1 hour')) AS lo,
                    array_agg(s.id) AS ids
             FROM perfwatch.series s WHERE s.id = ANY (p_ids) GROUP BY 1 LOOP
        RETURN QUERY
            WITH near AS (
                SELECT r.series_id, max(r.ts) AS ts
                FROM perfwatch.read_samples(g.ids, greatest(g.lo, t_from), t_to, '1 millisecond') r GROUP BY 1
            ), far AS (
                SELECT r.series_id, max(r.ts) AS ts
                FROM perfwatch.read_samples(ARRAY(SELECT i FROM unnest(g.ids) i EXCEPT SELECT n.series_id FROM near n),
                                            t_from, greatest(g.lo, t_from), '1 hour') r
                WHERE g.lo > t_from GROUP BY 1
            )
            SELECT * FROM near UNION ALL SELECT * FROM far;
    END LOOP;
END
$$;

-- Every host seen in [t_from, t_to]:
-- * first_seen, last_seen as above; reporting: last_seen within 5 minutes of t_to (Prometheus'
--   lookback, after which a series is stale);
-- * labels: the target's labels (job, instance and what relabelling added) = the current
--   node_uname_info series' labels without uname's own;
-- * kernel (uname release), machine, os (pretty_name, else name and version_id), cpu_model
--   (model_name, the distinct ones joined by ' + '), cpus: from the series current at last_seen.
CREATE OR REPLACE FUNCTION perfwatch.hosts(t_from timestamptz, t_to timestamptz, matchers jsonb DEFAULT NULL)
    RETURNS TABLE (instance text, job text, first_seen timestamptz, last_seen timestamptz, reporting boolean,
                   labels jsonb, kernel text, machine text, os text, cpu_model text, cpus integer)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    IF t_from IS NULL OR t_to IS NULL OR t_from > t_to THEN
        RAISE EXCEPTION 't_from must be at or before t_to, not % and %', t_from, t_to;
    END IF;
    RETURN QUERY
        WITH info AS (
            SELECT s.id, m.name AS metric, s.labels, s.labels ->> 'instance' AS inst, s.labels ->> 'job' AS jb,
                   s.first_seen, s.last_seen
            FROM perfwatch.metric m JOIN perfwatch.series s ON s.metric_id = m.id
            WHERE m.name IN ('node_uname_info', 'node_os_info', 'node_cpu_info')
              AND perfwatch.labels_match(s.labels, matchers)
        ), ranged AS (
            -- could have a sample in the range (last_seen lags the newest sample by up to an hour)
            SELECT i.*, max(least(i.last_seen, t_to)) OVER (PARTITION BY i.inst, i.jb, i.metric) AS newest
            FROM info i WHERE i.first_seen <= t_to AND i.last_seen >= t_from - interval '1 hour'
        ), candidates AS (
            -- only a series whose last_seen (or t_to) is within two hours of its metric's newest can
            -- hold the host's newest sample of that metric: the others need no read
            SELECT r.* FROM ranged r WHERE least(r.last_seen, t_to) >= r.newest - interval '2 hours'
        ), seen AS (
            SELECT c.*, l.ts, max(l.ts) OVER (PARTITION BY c.inst, c.jb, c.metric) AS metric_last
            FROM candidates c
            JOIN perfwatch.last_sample_at((SELECT array_agg(c2.id) FROM candidates c2), t_from, t_to) l ON l.series_id = c.id
        ), cur AS (
            SELECT s.* FROM seen s WHERE s.ts = s.metric_last
        ), host AS (
            SELECT c.inst, c.jb, max(c.ts) AS last_ts FROM cur c
            WHERE c.metric IN ('node_uname_info', 'node_os_info') GROUP BY 1, 2
        )
        SELECT h.inst, h.jb,
               (SELECT min(i.first_seen) FROM info i WHERE i.inst = h.inst AND i.jb = h.jb),
               h.last_ts, h.last_ts > t_to - interval '5 minutes',
               (SELECT c.labels - ARRAY['sysname', 'release', 'version', 'machine', 'nodename', 'domainname']
                FROM cur c WHERE c.inst = h.inst AND c.jb = h.jb AND c.metric = 'node_uname_info' ORDER BY c.id LIMIT 1),
               (SELECT c.labels ->> 'release' FROM cur c
                WHERE c.inst = h.inst AND c.jb = h.jb AND c.metric = 'node_uname_info' ORDER BY c.id LIMIT 1),
               (SELECT c.labels ->> 'machine' FROM cur c
                WHERE c.inst = h.inst AND c.jb = h.jb AND c.metric = 'node_uname_info' ORDER BY c.id LIMIT 1),
               (SELECT coalesce(nullif(c.labels ->> 'pretty_name', ''),
                                nullif(concat_ws(' ', c.labels ->> 'name', c.labels ->> 'version_id'), ''))
                FROM cur c WHERE c.inst = h.inst AND c.jb = h.jb AND c.metric = 'node_os_info' ORDER BY c.id LIMIT 1),
               (SELECT string_agg(DISTINCT c.labels ->> 'model_name', ' + ') FROM cur c
                WHERE c.inst = h.inst AND c.jb = h.jb AND c.metric = 'node_cpu_info'),
               (SELECT count(DISTINCT c.labels ->> 'cpu')::integer FROM cur c
                WHERE c.inst = h.inst AND c.jb = h.jb AND c.metric = 'node_cpu_info')
        FROM host h
        ORDER BY h.jb, h.inst;
END
$$;

-- Every change of an info label in [t_from, t_to]: at the time of the first sample of the new series
-- in its slot (host, metric, and cpu for node_cpu_info) after a sample of another series there, a row
-- per label whose value differs (from NULL: the label is new; to NULL: it went). A change made on
-- several CPUs at one scrape is one row: series says on how many, cpus which (node_cpu_info only).
--
-- step picks the level that serves the range as it does for every panel (plan_tiers: the coarsest
-- tier whose resolution divides it, finer levels for what it has not rolled up yet). Where raw
-- samples serve, changes are exact to the sample. Where a tier serves, each of its buckets stands for
-- its first and its last sample: a change is still exact to the sample where the slot changes at
-- most once in a bucket of that tier; a value that came and went inside one bucket shows at the
-- bucket's first or last sample, and a change back inside one bucket (A -> B -> A) at its last.
-- The value before a change must have been seen within one step before t_from.
-- Cost: the rows (samples or tier buckets), over [t_from - step, t_to], of the series in slots that
-- hold more than one series; slots that never changed are not read.
CREATE OR REPLACE FUNCTION perfwatch.host_changes(t_from timestamptz, t_to timestamptz, matchers jsonb DEFAULT NULL,
                                                  step interval DEFAULT '1 hour')
    RETURNS TABLE ("time" timestamptz, instance text, job text, metric text, label text, "from" text, "to" text,
                   series integer, cpus text)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    ids integer[];
    source text;
BEGIN
    IF t_from IS NULL OR t_to IS NULL OR t_from > t_to THEN
        RAISE EXCEPTION 't_from must be at or before t_to, not % and %', t_from, t_to;
    END IF;
    IF step IS NULL OR step <= interval '0' THEN
        RAISE EXCEPTION 'step must be a positive interval, not %', step;
    END IF;
    SELECT array_agg(x.id) INTO ids FROM (
        SELECT s.id, count(*) OVER (PARTITION BY m.name, s.labels ->> 'instance', s.labels ->> 'job',
                                    CASE WHEN m.name = 'node_cpu_info' THEN s.labels ->> 'cpu' END) AS n
        FROM perfwatch.metric m JOIN perfwatch.series s ON s.metric_id = m.id
        WHERE m.name IN ('node_uname_info', 'node_os_info', 'node_cpu_info')
          AND s.first_seen <= t_to AND s.last_seen >= t_from - step - interval '1 hour'
          AND perfwatch.labels_match(s.labels, matchers)
    ) x WHERE x.n > 1;
    IF ids IS NULL THEN
        RETURN;
    END IF;
    source := perfwatch.planned_buckets_sql(t_from - step, t_to + interval '1 millisecond', step, '$1');
    IF source IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format($q$
        WITH b AS (%s),
        obs AS (
            SELECT b.series_id, b.first_ts AS ts FROM b UNION SELECT b.series_id, b.last_ts FROM b
        ), seq AS (
            SELECT o.ts, o.series_id, m.name AS metric, s.labels,
                   lag(o.series_id) OVER w AS prev
            FROM obs o JOIN perfwatch.series s ON s.id = o.series_id JOIN perfwatch.metric m ON m.id = s.metric_id
            WINDOW w AS (PARTITION BY m.name, s.labels ->> 'instance', s.labels ->> 'job',
                                      CASE WHEN m.name = 'node_cpu_info' THEN s.labels ->> 'cpu' END
                         ORDER BY o.ts, o.series_id)
        ), diff AS (
            SELECT q.ts, q.labels ->> 'instance' AS instance, q.labels ->> 'job' AS job, q.metric, k.key,
                   f.labels ->> k.key AS old, q.labels ->> k.key AS new, q.labels ->> 'cpu' AS cpu
            FROM seq q JOIN perfwatch.series f ON f.id = q.prev,
                 LATERAL jsonb_object_keys(f.labels || q.labels) k(key)
            WHERE q.prev <> q.series_id AND q.ts >= $2 AND q.ts <= $3
              AND (f.labels -> k.key) IS DISTINCT FROM (q.labels -> k.key)
        )
        SELECT d.ts, d.instance, d.job, d.metric, d.key, d.old, d.new, count(*)::integer,
               CASE WHEN d.metric = 'node_cpu_info' THEN string_agg(d.cpu, ',' ORDER BY length(d.cpu), d.cpu) END
        FROM diff d
        GROUP BY d.ts, d.instance, d.job, d.metric, d.key, d.old, d.new
        ORDER BY d.ts, d.job, d.instance, d.metric, d.key
        $q$, source)
        USING ids, t_from, t_to;
END
$$;

GRANT EXECUTE ON FUNCTION
    perfwatch.last_sample_at(integer[], timestamptz, timestamptz),
    perfwatch.hosts(timestamptz, timestamptz, jsonb),
    perfwatch.host_changes(timestamptz, timestamptz, jsonb, interval)
TO perfwatch_grafana;
