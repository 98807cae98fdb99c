-- Buckets: where they start, and how finer buckets merge into coarser ones. The rollup
-- (rollup.sql) and the read side (read.sql) both merge with merge_buckets_sql, so a tier's
-- bucket and an answer read from finer data are computed by the same definition.

-- Buckets start on multiples of their width counted from the epoch (what Grafana's $__timeGroup gives).
-- Not STRICT (NULL gives NULL all the same), so that the planner inlines it: called per sample by
-- the rollups and the compaction, a function call each cost them a third of their time.
CREATE OR REPLACE FUNCTION perfwatch.bucket_floor(width interval, t timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN isfinite(t) THEN date_bin(width, t, timestamptz '1970-01-01 00:00:00+00') ELSE t END;

CREATE OR REPLACE FUNCTION perfwatch.bucket_ceil(width interval, t timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN perfwatch.bucket_floor(width, t) = t THEN t ELSE perfwatch.bucket_floor(width, t) + width END;

-- Prometheus' increase between two consecutive samples of a counter: a drop is a reset to zero, so
-- the increase across it is the new value.
CREATE OR REPLACE FUNCTION perfwatch.counter_delta(prev double precision, cur double precision)
    RETURNS double precision
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN prev IS NULL THEN 0 WHEN cur >= prev THEN cur - prev ELSE cur END;

-- The query that merges the buckets of p_source into buckets p_width wide. p_source yields bucket
-- rows (series_id, bucket, res, count, sum, min, max, first_ts, first_value, last_ts, last_value,
-- increase, resets), a raw sample being a bucket of one sample (res 0, increase 0, resets 0);
-- res is the width in seconds of the bucket the row comes from. The result has the same columns
-- (res: the widest source bucket), one row per series and merged bucket:
-- * count, sum, min, max, first and last sample merge as their names say (avg = sum / count);
-- * increase: the source buckets' increases, plus, for each pair of consecutive source buckets,
--   the counter_delta from the earlier one's last value to the later one's first value, counted in
--   the later one's merged bucket; resets likewise. With p_pairs_across false only pairs inside one
--   merged bucket count (a tier: the pair across its boundary is recovered from last and first
--   values when the tier is read); with true, also pairs across merged buckets (a read: every pair
--   inside the queried range counts).
-- Increase and resets are computed for every series: callers keep them where counter maths apply.
-- The float sums add their input in time order (ORDER BY in the aggregate, which the window's order
-- makes free), so they come out bit for bit the same whatever range is merged and whatever plan
-- the planner picks, which the rollup's idempotency relies on.
CREATE OR REPLACE FUNCTION perfwatch.merge_buckets_sql(p_source text, p_width interval, p_pairs_across boolean)
    RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN format($q$
        SELECT m.series_id, m.b AS bucket, max(m.res) AS res, sum(m.count)::integer AS count,
               sum(m.sum ORDER BY m.bucket) AS sum,
               min(m.min) AS min, max(m.max) AS max,
               min(m.first_ts) AS first_ts, min(m.first_value) FILTER (WHERE m.opens) AS first_value,
               max(m.last_ts) AS last_ts, min(m.last_value) FILTER (WHERE m.closes) AS last_value,
               sum(m.increase ORDER BY m.bucket)
                   + sum(perfwatch.counter_delta(m.prev, m.first_value) ORDER BY m.bucket) AS increase,
               (sum(m.resets) + count(*) FILTER (WHERE m.first_value < m.prev))::integer AS resets
        FROM (
            SELECT r.*,
                   lag(r.b) OVER w IS DISTINCT FROM r.b AS opens,
                   lead(r.b) OVER w IS DISTINCT FROM r.b AS closes,
                   CASE WHEN %3$L OR lag(r.b) OVER w = r.b THEN lag(r.last_value) OVER w END AS prev
            FROM (SELECT src.*, perfwatch.bucket_floor(%2$L, src.bucket) AS b FROM (%1$s) src) r
            WINDOW w AS (PARTITION BY r.series_id ORDER BY r.b, r.bucket)
        ) m
        GROUP BY m.series_id, m.b
        $q$, p_source, p_width, p_pairs_across);

-- What merge_buckets_sql(<the samples as one-sample bucket rows>, p_width, false) gives, bit for
-- bit, from raw samples (series_id, ts, value) directly: the first tier's rollup. A sample's bucket
-- row carries nothing the sample does not, so one window (the previous value in the same bucket,
-- and whether a later one follows) and plain aggregates do: a fifth less work per sample, where the
-- rollup spends its time. tests/test_archive_rollup_sql.py holds the two equal.
CREATE OR REPLACE FUNCTION perfwatch.merge_samples_sql(p_source text, p_width interval)
    RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN format($q$
        SELECT m.series_id, m.b AS bucket, 0::double precision AS res, count(*)::integer AS count,
               sum(m.value ORDER BY m.ts) AS sum, min(m.value) AS min, max(m.value) AS max,
               min(m.ts) AS first_ts, min(m.value) FILTER (WHERE m.prev IS NULL) AS first_value,
               max(m.ts) AS last_ts, min(m.value) FILTER (WHERE m.closes) AS last_value,
               sum(perfwatch.counter_delta(m.prev, m.value) ORDER BY m.ts) AS increase,
               count(*) FILTER (WHERE m.value < m.prev)::integer AS resets
        FROM (
            -- prev is NULL only for a bucket's first sample: values are never NULL
            SELECT r.series_id, r.b, r.ts, r.value, lag(r.value) OVER w AS prev, lead(r.ts) OVER w IS NULL AS closes
            FROM (SELECT src.series_id, src.ts, src.value, perfwatch.bucket_floor(%2$L, src.ts) AS b
                  FROM (%1$s) src) r
            WINDOW w AS (PARTITION BY r.series_id, r.b ORDER BY r.ts)
        ) m
        GROUP BY m.series_id, m.b
        $q$, p_source, p_width);

GRANT EXECUTE ON FUNCTION
    perfwatch.bucket_floor(interval, timestamptz),
    perfwatch.bucket_ceil(interval, timestamptz),
    perfwatch.counter_delta(double precision, double precision),
    perfwatch.merge_buckets_sql(text, interval, boolean),
    perfwatch.merge_samples_sql(text, interval)
TO perfwatch_grafana;
