-- Utilisation summaries and right-sizing, over perfwatch.utilisation_summary (schema 0009), for
-- Grafana (role perfwatch_grafana), `perfwatch-archiver report` and the summary job
-- (perfwatch/archiver/summarise.py).
--
--   perfwatch.utilisation_buckets(t_from, t_to, matchers)        per host and first-tier bucket: cpu, memory,
--                                                                disk, network (bytes/s), network_share
--   perfwatch.utilisation(period, t_from, t_to, matchers)        per host and period: avg, p95, max
--   perfwatch.rightsizing(period, t_from, t_to, matchers, thresholds)   per host: verdict, bottleneck,
--                                                                recommendation and its evidence
--
-- A host is a (job, instance). Periods are 'hour', 'day', 'week' (ISO, from Monday) and 'month',
-- in UTC. The values of a bucket [t, t + step), step the first tier's resolution (5m by default):
-- * cpu: the share of node_cpu_seconds_total's increase, all CPUs together, in modes other than
--   idle, iowait and steal (the recording rule instance:perfwatch_cpu_utilisation:rate5m's definition);
-- * memory: 1 - avg(node_memory_MemAvailable_bytes) / avg(node_memory_MemTotal_bytes);
-- * disk: the busiest device's node_disk_io_time_seconds_total rate (share of the bucket busy);
-- * network: node_network_{receive,transmit}_bytes_total rates summed over the devices but lo (bytes/s);
-- * network_share: the busiest device and direction's rate over its node_network_speed_bytes.
-- Counter increases are perfwatch.series'; each bucket's includes the pair of samples across its
-- start, so no time between scrapes is lost. A period's avg, p95 and max are over its buckets' values;
-- p95 is percentile_cont(0.95): linear between the two nearest ranks, as PromQL's quantile_over_time.
-- Every float sum adds in a fixed order (series, then time), so a period computed again from the
-- same buckets comes out bit for bit the same, which the summaries' idempotency relies on.
-- `matchers` are read.sql's labels_match matchers on job and instance (NULL: every host).
-- plpgsql, so what read.sql defines is looked up when called.

-- The width of the buckets the statistics are over: the first tier's resolution.
CREATE OR REPLACE FUNCTION perfwatch.utilisation_step() RETURNS interval
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    step interval;
BEGIN
    SELECT p.resolution INTO step FROM perfwatch.archive_policy p WHERE p.level = 1;
    IF step IS NULL THEN
        RAISE EXCEPTION 'the archive policy has no tier: utilisation summaries are over the first tier''s buckets';
    END IF;
    RETURN step;
END
$$;

-- The start of the period of kind p_period that holds t (UTC), and the start n periods later.
CREATE OR REPLACE FUNCTION perfwatch.period_floor(p_period text, t timestamptz) RETURNS timestamptz
    LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_period IS NULL OR p_period NOT IN ('hour', 'day', 'week', 'month') THEN
        RAISE EXCEPTION 'period must be hour, day, week or month, not %', coalesce(p_period, 'NULL');
    END IF;
    RETURN CASE WHEN isfinite(t) THEN date_trunc(p_period, t, 'UTC') ELSE t END;
END
$$;

CREATE OR REPLACE FUNCTION perfwatch.period_add(p_period text, t timestamptz, n integer DEFAULT 1) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE
    -- in UTC whatever the session's time zone (a month or a day is not a fixed number of seconds elsewhere)
    RETURN ((t AT TIME ZONE 'UTC') + n * ('1 ' || p_period)::interval) AT TIME ZONE 'UTC';

-- Per host and bucket of [t_from, t_to) (widened to whole buckets): the values defined above.
CREATE OR REPLACE FUNCTION perfwatch.utilisation_buckets(t_from timestamptz, t_to timestamptz, matchers jsonb DEFAULT NULL)
    RETURNS TABLE ("time" timestamptz, job text, instance text, cpu double precision, memory double precision,
                   disk double precision, network double precision, network_share double precision)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
#variable_conflict use_column
DECLARE
    step interval := perfwatch.utilisation_step();
    lo timestamptz := perfwatch.bucket_floor(step, t_from);
    -- one bucket earlier, so that the first bucket's counter increase has the pair across its start
    before timestamptz := lo - step;
    devices jsonb := coalesce(matchers, '{}') || '{"device": {"!=": "lo"}}';
BEGIN
    IF t_to <= t_from THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH cpu AS (
        SELECT s.time, s.labels ->> 'job' AS job, s.labels ->> 'instance' AS instance,
               coalesce(sum(s.increase ORDER BY s.series_id)
                            FILTER (WHERE s.labels ->> 'mode' NOT IN ('idle', 'iowait', 'steal')), 0)
                   / nullif(sum(s.increase ORDER BY s.series_id), 0) AS v
        FROM perfwatch.series('node_cpu_seconds_total', matchers, before, t_to, step) s
        WHERE s.time >= lo
        GROUP BY 1, 2, 3
    ), mem_total AS (
        SELECT s.time, s.labels ->> 'job' AS job, s.labels ->> 'instance' AS instance, avg(s.avg ORDER BY s.series_id) AS v
        FROM perfwatch.series('node_memory_MemTotal_bytes', matchers, lo, t_to, step) s
        GROUP BY 1, 2, 3
    ), mem_available AS (
        SELECT s.time, s.labels ->> 'job' AS job, s.labels ->> 'instance' AS instance, avg(s.avg ORDER BY s.series_id) AS v
        FROM perfwatch.series('node_memory_MemAvailable_bytes', matchers, lo, t_to, step) s
        GROUP BY 1, 2, 3
    ), mem AS (
        SELECT t.time, t.job, t.instance, 1 - a.v / nullif(t.v, 0) AS v
        FROM mem_total t JOIN mem_available a USING ("time", job, instance)
    ), disk AS (
        SELECT s.time, s.labels ->> 'job' AS job, s.labels ->> 'instance' AS instance, max(s.rate) AS v
        FROM perfwatch.series('node_disk_io_time_seconds_total', matchers, before, t_to, step) s
        WHERE s.time >= lo
        GROUP BY 1, 2, 3
    ), rx AS (
        SELECT s.time, s.labels ->> 'job' AS job, s.labels ->> 'instance' AS instance, s.labels ->> 'device' AS device,
               s.rate AS v
        FROM perfwatch.series('node_network_receive_bytes_total', devices, before, t_to, step) s
        WHERE s.time >= lo
    ), tx AS (
        SELECT s.time, s.labels ->> 'job' AS job, s.labels ->> 'instance' AS instance, s.labels ->> 'device' AS device,
               s.rate AS v
        FROM perfwatch.series('node_network_transmit_bytes_total', devices, before, t_to, step) s
        WHERE s.time >= lo
    ), speed AS (
        SELECT s.time, s.labels ->> 'job' AS job, s.labels ->> 'instance' AS instance, s.labels ->> 'device' AS device,
               s.avg AS v
        FROM perfwatch.series('node_network_speed_bytes', devices, lo, t_to, step) s
        WHERE s.avg > 0  -- node_exporter reports -1 where the driver does not know
    ), net AS (
        SELECT d.time, d.job, d.instance, sum(coalesce(rx.v, 0) + coalesce(tx.v, 0) ORDER BY d.device) AS v,
               max(greatest(rx.v, tx.v) / sp.v) AS share
        FROM rx FULL JOIN tx USING ("time", job, instance, device)
        CROSS JOIN LATERAL (SELECT coalesce(rx.time, tx.time) AS time, coalesce(rx.job, tx.job) AS job,
                                   coalesce(rx.instance, tx.instance) AS instance,
                                   coalesce(rx.device, tx.device) AS device) d
        LEFT JOIN speed sp ON sp.time = d.time AND sp.job = d.job AND sp.instance = d.instance AND sp.device = d.device
        GROUP BY 1, 2, 3
    ), hosts AS (
        SELECT c.time, c.job, c.instance FROM cpu c
        UNION SELECT m.time, m.job, m.instance FROM mem m
        UNION SELECT k.time, k.job, k.instance FROM disk k
        UNION SELECT n.time, n.job, n.instance FROM net n
    )
    SELECT h.time, h.job, h.instance, cpu.v, mem.v, disk.v, net.v, net.share
    FROM hosts h
    LEFT JOIN cpu USING ("time", job, instance)
    LEFT JOIN mem USING ("time", job, instance)
    LEFT JOIN disk USING ("time", job, instance)
    LEFT JOIN net USING ("time", job, instance)
    WHERE h.job IS NOT NULL AND h.instance IS NOT NULL
    ORDER BY 1, 2, 3;
END
$$;

-- Per host and period of kind p_period starting in [t_from, t_to) (t_from moved to its period's
-- start): the statistics of its buckets before t_to. expected: the period's buckets up to p_until.
CREATE OR REPLACE FUNCTION perfwatch.utilisation_compute(p_period text, t_from timestamptz, t_to timestamptz,
                                                         matchers jsonb DEFAULT NULL,
                                                         p_until timestamptz DEFAULT 'infinity')
    RETURNS TABLE (period_start timestamptz, job text, instance text, step interval, buckets integer, expected integer,
                   cpu_avg double precision, cpu_p95 double precision, cpu_max double precision,
                   memory_avg double precision, memory_p95 double precision, memory_max double precision,
                   disk_p95 double precision, disk_max double precision, network_p95 double precision,
                   network_max double precision, network_share_p95 double precision)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
#variable_conflict use_column
DECLARE
    width interval := perfwatch.utilisation_step();
    lo timestamptz := perfwatch.period_floor(p_period, t_from);
BEGIN
    RETURN QUERY
        SELECT x.ps, b.job, b.instance, width, count(b.cpu)::integer,
               ceil(extract(epoch FROM least(perfwatch.period_add(p_period, x.ps), greatest(p_until, x.ps + width)) - x.ps)
                    / extract(epoch FROM width))::integer,
               avg(b.cpu ORDER BY b.time), percentile_cont(0.95) WITHIN GROUP (ORDER BY b.cpu), max(b.cpu),
               avg(b.memory ORDER BY b.time), percentile_cont(0.95) WITHIN GROUP (ORDER BY b.memory), max(b.memory),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY b.disk), max(b.disk),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY b.network), max(b.network),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY b.network_share)
        FROM perfwatch.utilisation_buckets(lo, t_to, matchers) b
        CROSS JOIN LATERAL (SELECT perfwatch.period_floor(p_period, b.time) AS ps) x
        WHERE b.time < t_to
        GROUP BY x.ps, b.job, b.instance
        ORDER BY 1, 2, 3;
END
$$;

-- Store the summaries of the periods of kind p_period in [p_lo, p_hi) (both on the period grid), from
-- what the first tier holds now. A row is rewritten only when a value differs, and a host that no
-- longer has data in a period loses its row: running it again changes nothing and reports 0.
CREATE OR REPLACE FUNCTION perfwatch.summarise_range(p_period text, p_lo timestamptz, p_hi timestamptz) RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    written bigint;
    removed bigint;
BEGIN
    IF p_lo <> perfwatch.period_floor(p_period, p_lo) OR p_hi <> perfwatch.period_floor(p_period, p_hi) THEN
        RAISE EXCEPTION 'summary range [%, %) is not on the % grid', p_lo, p_hi, p_period;
    END IF;
    IF p_hi <= p_lo THEN
        RETURN 0;
    END IF;
    CREATE TEMPORARY TABLE perfwatch_summaries ON COMMIT DROP AS
        SELECT * FROM perfwatch.utilisation_compute(p_period, p_lo, p_hi);
    INSERT INTO perfwatch.utilisation_summary AS u
        (period, period_start, job, instance, step, buckets, expected, cpu_avg, cpu_p95, cpu_max, memory_avg,
         memory_p95, memory_max, disk_p95, disk_max, network_p95, network_max, network_share_p95)
    SELECT p_period, c.period_start, c.job, c.instance, c.step, c.buckets, c.expected, c.cpu_avg, c.cpu_p95, c.cpu_max,
           c.memory_avg, c.memory_p95, c.memory_max, c.disk_p95, c.disk_max, c.network_p95, c.network_max,
           c.network_share_p95
    FROM perfwatch_summaries c
    ON CONFLICT (period, period_start, job, instance) DO UPDATE SET
        step = excluded.step, buckets = excluded.buckets, expected = excluded.expected, cpu_avg = excluded.cpu_avg,
        cpu_p95 = excluded.cpu_p95, cpu_max = excluded.cpu_max, memory_avg = excluded.memory_avg,
        memory_p95 = excluded.memory_p95, memory_max = excluded.memory_max, disk_p95 = excluded.disk_p95,
        disk_max = excluded.disk_max, network_p95 = excluded.network_p95, network_max = excluded.network_max,
        network_share_p95 = excluded.network_share_p95, computed_at = now()
    WHERE (u.step, u.buckets, u.expected, u.cpu_avg, u.cpu_p95, u.cpu_max, u.memory_avg, u.memory_p95, u.memory_max,
           u.disk_p95, u.disk_max, u.network_p95, u.network_max, u.network_share_p95)
          IS DISTINCT FROM
          (excluded.step, excluded.buckets, excluded.expected, excluded.cpu_avg, excluded.cpu_p95, excluded.cpu_max,
           excluded.memory_avg, excluded.memory_p95, excluded.memory_max, excluded.disk_p95, excluded.disk_max,
           excluded.network_p95, excluded.network_max, excluded.network_share_p95);
    GET DIAGNOSTICS written = ROW_COUNT;
    DELETE FROM perfwatch.utilisation_summary u
        WHERE u.period = p_period AND u.period_start >= p_lo AND u.period_start < p_hi
          AND NOT EXISTS (SELECT FROM perfwatch_summaries c
                          WHERE c.period_start = u.period_start AND c.job = u.job AND c.instance = u.instance);
    GET DIAGNOSTICS removed = ROW_COUNT;
    DROP TABLE perfwatch_summaries;
    RETURN written + removed;
END
$$;

-- One step of p_period's summaries: the next closed periods after its watermark (a day of hours, a
-- week of days, four weeks, a month), then the watermark moves. A period is closed when it ends at or
-- before the first tier's watermark. Returns the range done; lo = hi (or NULL): nothing to do.
-- Each call is one transaction; the state row's lock keeps two passes from doing the same work.
CREATE OR REPLACE FUNCTION perfwatch.summarise_next(p_period text, OUT lo timestamptz, OUT hi timestamptz,
                                                    OUT rows bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    st perfwatch.utilisation_state;
    t perfwatch.tier;
    closed_before timestamptz;
    next_data timestamptz;
BEGIN
    SELECT * INTO st FROM perfwatch.utilisation_state s WHERE s.period = p_period FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'period must be hour, day, week or month, not %', coalesce(p_period, 'NULL');
    END IF;
    SELECT tt.* INTO t FROM perfwatch.archive_policy p JOIN perfwatch.tier tt ON tt.name = p.tier WHERE p.level = 1;
    IF t.watermark IS NULL THEN
        RETURN;
    END IF;
    closed_before := perfwatch.period_floor(p_period, t.watermark);
    lo := st.watermark;
    IF lo IS NULL THEN
        SELECT min(pa.lo) INTO lo FROM perfwatch.level_partitions(t.name) pa;
        IF lo IS NULL THEN
            RETURN;
        END IF;
        lo := perfwatch.period_floor(p_period, greatest(lo, coalesce(t.horizon, '-infinity')));
    END IF;
    rows := 0;
    IF lo >= closed_before THEN
        hi := lo;
        RETURN;
    END IF;
    -- Where the first tier has no partition there is nothing to summarise: move past the gap at once.
    SELECT perfwatch.period_floor(p_period, min(pa.lo)) INTO next_data
        FROM perfwatch.level_partitions(t.name) pa WHERE pa.hi > summarise_next.lo;
    IF next_data IS NULL OR next_data >= closed_before THEN
        hi := closed_before;
    ELSE
        lo := greatest(lo, next_data);
        hi := least(perfwatch.period_add(p_period, lo, CASE p_period WHEN 'hour' THEN 24 WHEN 'day' THEN 7
                                                                      WHEN 'week' THEN 4 ELSE 1 END),
                    closed_before);
        rows := perfwatch.summarise_range(p_period, lo, hi);
    END IF;
    UPDATE perfwatch.utilisation_state s SET watermark = hi WHERE s.period = p_period;
END
$$;

-- Summarise again the stored periods that late samples changed (utilisation_dirty), once the first
-- tier has rolled those samples up (no range of its rollup_dirty overlaps). Returns rows written.
CREATE OR REPLACE FUNCTION perfwatch.summarise_dirty() RETURNS bigint
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    first_tier text;
    ready bigint[];
    k perfwatch.utilisation_state;
    rng tstzrange;
    total bigint := 0;
BEGIN
    SELECT p.tier INTO first_tier FROM perfwatch.archive_policy p WHERE p.level = 1;
    SELECT array_agg(d.id) INTO ready FROM perfwatch.utilisation_dirty d
        WHERE NOT EXISTS (SELECT FROM perfwatch.rollup_dirty r WHERE r.tier = first_tier AND r.lo <= d.hi AND r.hi >= d.lo);
    IF ready IS NULL THEN
        RETURN 0;
    END IF;
    FOR k IN SELECT * FROM perfwatch.utilisation_state s WHERE s.watermark IS NOT NULL ORDER BY s.period FOR UPDATE LOOP
        FOR rng IN
            WITH b AS (SELECT perfwatch.period_floor(k.period, d.lo) AS lo,
                              least(perfwatch.period_add(k.period, perfwatch.period_floor(k.period, d.hi)), k.watermark) AS hi
                       FROM perfwatch.utilisation_dirty d WHERE d.id = ANY (ready))
            SELECT unnest(range_agg(tstzrange(b.lo, b.hi))) FROM b WHERE b.lo < b.hi
        LOOP
            total := total + perfwatch.summarise_range(k.period, lower(rng), upper(rng));
        END LOOP;
    END LOOP;
    DELETE FROM perfwatch.utilisation_dirty d WHERE d.id = ANY (ready);
    RETURN total;
END
$$;

CREATE OR REPLACE FUNCTION perfwatch.record_summary(p_period text, p_at timestamptz, p_seconds double precision,
                                                    p_rows bigint) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        UPDATE perfwatch.utilisation_state
           SET last_run_at = p_at, last_run_seconds = p_seconds, last_run_rows = p_rows
         WHERE period = p_period;
    END;

-- The config's rightsizing thresholds ({"cpu_over": 0.8, ...}) become the mirror's whole content.
CREATE OR REPLACE FUNCTION perfwatch.mirror_rightsizing(p_thresholds jsonb) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    DELETE FROM perfwatch.rightsizing_threshold r WHERE NOT p_thresholds ? r.name;
    INSERT INTO perfwatch.rightsizing_threshold AS r (name, value)
        SELECT e.key, e.value::double precision FROM jsonb_each_text(p_thresholds) e
        ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = now() WHERE r.value <> excluded.value;
END
$$;

-- Late samples the first tier rolls up again (perfwatch.rollup_dirty) change the periods they fall in.
CREATE OR REPLACE FUNCTION perfwatch.note_utilisation_dirty() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    IF NEW.tier = (SELECT p.tier FROM perfwatch.archive_policy p WHERE p.level = 1) THEN
        INSERT INTO perfwatch.utilisation_dirty (lo, hi) VALUES (NEW.lo, NEW.hi);
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER rollup_dirty_utilisation AFTER INSERT ON perfwatch.rollup_dirty
    FOR EACH ROW EXECUTE FUNCTION perfwatch.note_utilisation_dirty();

-- Per host and period of kind p_period overlapping [t_from, t_to): the stored summaries (final),
-- and for the periods after the summaries' watermark (the open one included) the same computed now
-- from what the archive holds (final false; expected counts the buckets up to now only).
-- coverage = buckets / expected.
CREATE OR REPLACE FUNCTION perfwatch.utilisation(p_period text, t_from timestamptz, t_to timestamptz,
                                                 matchers jsonb DEFAULT NULL)
    RETURNS TABLE (period_start timestamptz, job text, instance text, final boolean, step interval, buckets integer,
                   expected integer, coverage double precision,
                   cpu_avg double precision, cpu_p95 double precision, cpu_max double precision,
                   memory_avg double precision, memory_p95 double precision, memory_max double precision,
                   disk_p95 double precision, disk_max double precision, network_p95 double precision,
                   network_max double precision, network_share_p95 double precision)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
#variable_conflict use_column
DECLARE
    lo timestamptz := perfwatch.period_floor(p_period, t_from);
    wm timestamptz;
    live_from timestamptz;
BEGIN
    SELECT s.watermark INTO wm FROM perfwatch.utilisation_state s WHERE s.period = p_period;
    -- computed on read: from the watermark, or, before the first summary pass, from the first tier's
    -- oldest data (not from t_from: a year's range must not become a year's computation)
    live_from := greatest(lo, coalesce(wm, perfwatch.period_floor(p_period,
        (SELECT min(pa.lo) FROM perfwatch.archive_policy p, perfwatch.level_partitions(p.tier) pa WHERE p.level = 1))));
    RETURN QUERY
        SELECT u.period_start, u.job, u.instance, true, u.step, u.buckets, u.expected,
               u.buckets::double precision / nullif(u.expected, 0),
               u.cpu_avg, u.cpu_p95, u.cpu_max, u.memory_avg, u.memory_p95, u.memory_max, u.disk_p95, u.disk_max,
               u.network_p95, u.network_max, u.network_share_p95
        FROM perfwatch.utilisation_summary u
        WHERE u.period = p_period AND u.period_start >= lo AND u.period_start < t_to
          AND u.period_start < coalesce(wm, '-infinity')
          AND perfwatch.labels_match(jsonb_build_object('job', u.job, 'instance', u.instance), matchers)
        UNION ALL
        SELECT c.period_start, c.job, c.instance, false, c.step, c.buckets, c.expected,
               c.buckets::double precision / nullif(c.expected, 0),
               c.cpu_avg, c.cpu_p95, c.cpu_max, c.memory_avg, c.memory_p95, c.memory_max, c.disk_p95, c.disk_max,
               c.network_p95, c.network_max, c.network_share_p95
        FROM perfwatch.utilisation_compute(p_period, live_from, t_to, matchers, now()) c
        WHERE live_from IS NOT NULL AND live_from < t_to
        ORDER BY 1, 2, 3;
END
$$;

-- Right-sizing per host over the periods of kind p_period overlapping [t_from, t_to) that have at
-- least min_coverage of their buckets. Each resource's figure is its highest p95 among those
-- periods (the busiest period decides: a host is under-utilised only if even that one was quiet).
-- * over-utilised: some resource's p95 at or above its *_over threshold; the bottleneck is the one
--   furthest above its threshold (p95 / threshold);
-- * under-utilised: otherwise, CPU p95 below cpu_under and memory p95 below memory_under;
-- * ok, or insufficient data (no period with enough buckets).
-- Thresholds: the mirrored config (rightsizing_threshold), each overridden by p_thresholds' keys.
CREATE OR REPLACE FUNCTION perfwatch.rightsizing(p_period text, t_from timestamptz, t_to timestamptz,
                                                 matchers jsonb DEFAULT NULL, p_thresholds jsonb DEFAULT NULL)
    RETURNS TABLE (job text, instance text, verdict text, bottleneck text, recommendation text, evidence text,
                   periods integer, cpu_p95 double precision, memory_p95 double precision,
                   disk_p95 double precision, network_p95 double precision, network_share_p95 double precision,
                   details jsonb)
    LANGUAGE plpgsql STABLE SET search_path = pg_catalog, perfwatch AS $$
#variable_conflict use_column
DECLARE
    th jsonb;
    missing text;
BEGIN
    SELECT coalesce(jsonb_object_agg(r.name, r.value), '{}') || coalesce(p_thresholds, '{}') INTO th
        FROM perfwatch.rightsizing_threshold r;
    SELECT string_agg(k, ', ') INTO missing
        FROM unnest(ARRAY['cpu_under', 'memory_under', 'cpu_over', 'memory_over', 'disk_over', 'network_over',
                          'min_coverage']) k
        WHERE NOT th ? k OR jsonb_typeof(th -> k) <> 'number';
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'rightsizing thresholds not set: % (the archiver mirrors its config''s rightsizing section '
                        'at each summary pass; or pass them as p_thresholds)', missing;
    END IF;
    RETURN QUERY
    WITH u AS (
        SELECT * FROM perfwatch.utilisation(p_period, t_from, t_to, matchers)
    ), hosts AS (
        SELECT DISTINCT u.job, u.instance FROM u
    ), ok AS (
        SELECT * FROM u WHERE u.coverage >= (th ->> 'min_coverage')::double precision
    ), worst AS (
        SELECT ok.job, ok.instance, count(*)::integer AS periods,
               max(ok.cpu_p95) AS cpu, max(ok.memory_p95) AS memory, max(ok.disk_p95) AS disk,
               max(ok.network_p95) AS network, max(ok.network_share_p95) AS network_share,
               (array_agg(ok.period_start ORDER BY ok.cpu_p95 DESC NULLS LAST))[1] AS cpu_at,
               (array_agg(ok.period_start ORDER BY ok.memory_p95 DESC NULLS LAST))[1] AS memory_at,
               (array_agg(ok.period_start ORDER BY ok.disk_p95 DESC NULLS LAST))[1] AS disk_at,
               (array_agg(ok.period_start ORDER BY ok.network_share_p95 DESC NULLS LAST))[1] AS network_at,
               (array_agg(ok.period_start ORDER BY ok.network_p95 DESC NULLS LAST))[1] AS network_bytes_at
        FROM ok GROUP BY ok.job, ok.instance
    ), res AS (
        SELECT w.job, w.instance, r.resource, r.label, r.p95, r.threshold, r.at
        FROM worst w CROSS JOIN LATERAL (VALUES
            ('cpu', 'CPU', w.cpu, (th ->> 'cpu_over')::double precision, w.cpu_at),
            ('memory', 'memory', w.memory, (th ->> 'memory_over')::double precision, w.memory_at),
            ('disk', 'disk I/O', w.disk, (th ->> 'disk_over')::double precision, w.disk_at),
            ('network', 'network', w.network_share, (th ->> 'network_over')::double precision, w.network_at)
        ) r(resource, label, p95, threshold, at)
    ), verdicts AS (
        SELECT h.job, h.instance, w.periods, w.cpu, w.memory, w.disk, w.network, w.network_share, w.network_bytes_at,
               (SELECT r.resource FROM res r WHERE r.job = h.job AND r.instance = h.instance AND r.p95 >= r.threshold
                ORDER BY r.p95 / r.threshold DESC, r.resource LIMIT 1) AS bottleneck,
               (SELECT string_agg(format('%s p95 %s%% %s (%s)', r.label, round((r.p95 * 100)::numeric, 1),
                                         CASE WHEN r.p95 >= r.threshold THEN format('>= %s%% threshold', round((r.threshold * 100)::numeric, 1))
                                              ELSE format('< %s%%', round((r.threshold * 100)::numeric, 1)) END,
                                         to_char(r.at AT TIME ZONE 'UTC', CASE p_period WHEN 'hour' THEN 'YYYY-MM-DD HH24:00'
                                                                           WHEN 'month' THEN 'YYYY-MM' ELSE 'YYYY-MM-DD' END)),
                                  '; ' ORDER BY r.p95 / r.threshold DESC)
                FROM res r WHERE r.job = h.job AND r.instance = h.instance AND r.p95 IS NOT NULL) AS measured,
               (SELECT jsonb_object_agg(r.resource, jsonb_build_object('p95', r.p95, 'over_threshold', r.threshold,
                                                                      'period_start', r.at))
                FROM res r WHERE r.job = h.job AND r.instance = h.instance AND r.p95 IS NOT NULL) AS per_resource
        FROM hosts h LEFT JOIN worst w ON w.job = h.job AND w.instance = h.instance
    )
    SELECT v.job, v.instance,
           CASE WHEN v.periods IS NULL THEN 'insufficient data'
                WHEN v.bottleneck IS NOT NULL THEN 'over-utilised'
                WHEN v.cpu < (th ->> 'cpu_under')::double precision
                     AND v.memory < (th ->> 'memory_under')::double precision THEN 'under-utilised'
                ELSE 'ok' END,
           v.bottleneck,
           CASE WHEN v.periods IS NULL THEN
                    format('no %s with %s%% of its buckets yet: wait for more history', p_period,
                           round(((th ->> 'min_coverage')::numeric * 100), 0))
                WHEN v.bottleneck = 'cpu' THEN 'add CPU or move load away: CPU is the bottleneck'
                WHEN v.bottleneck = 'memory' THEN 'add memory: memory is the bottleneck'
                WHEN v.bottleneck = 'disk' THEN 'faster or more disks, or less I/O: disk I/O is the bottleneck'
                WHEN v.bottleneck = 'network' THEN 'more network bandwidth: the network is the bottleneck'
                WHEN v.cpu < (th ->> 'cpu_under')::double precision
                     AND v.memory < (th ->> 'memory_under')::double precision THEN
                    format('downsize: even the busiest %s stays below %s%% CPU and %s%% memory (p95)', p_period,
                           round(((th ->> 'cpu_under')::numeric * 100), 1), round(((th ->> 'memory_under')::numeric * 100), 1))
                ELSE 'keep the size: no resource is under or over its thresholds' END,
           CASE WHEN v.periods IS NULL THEN format('no %s has enough buckets', p_period)
                ELSE format('highest p95 over %s %s(s): %s%s', v.periods, p_period, coalesce(v.measured, 'no values'),
                            CASE WHEN v.network IS NOT NULL
                                 THEN format('; network p95 %s B/s', round(v.network::numeric, 0)) ELSE '' END) END,
           coalesce(v.periods, 0), v.cpu, v.memory, v.disk, v.network, v.network_share,
           jsonb_build_object('period', p_period, 'periods', coalesce(v.periods, 0), 'thresholds', th,
                              'resources', coalesce(v.per_resource, '{}'),
                              'network_bytes_per_second', jsonb_build_object('p95', v.network,
                                                                            'period_start', v.network_bytes_at))
    FROM verdicts v
    ORDER BY CASE WHEN v.periods IS NULL THEN 3 WHEN v.bottleneck IS NOT NULL THEN 0
                  WHEN v.cpu < (th ->> 'cpu_under')::double precision
                       AND v.memory < (th ->> 'memory_under')::double precision THEN 1 ELSE 2 END,
             v.job, v.instance;
END
$$;

GRANT EXECUTE ON FUNCTION
    perfwatch.utilisation_step(),
    perfwatch.period_floor(text, timestamptz),
    perfwatch.period_add(text, timestamptz, integer),
    perfwatch.utilisation_buckets(timestamptz, timestamptz, jsonb),
    perfwatch.utilisation_compute(text, timestamptz, timestamptz, jsonb, timestamptz),
    perfwatch.utilisation(text, timestamptz, timestamptz, jsonb),
    perfwatch.rightsizing(text, timestamptz, timestamptz, jsonb, jsonb)
TO perfwatch_grafana;
