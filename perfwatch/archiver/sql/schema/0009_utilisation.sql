-- Utilisation summaries per host (job, instance) and period (hour, day, week, month, UTC), for
-- right-sizing. Computed by perfwatch/archiver/summarise.py through sql/functions/utilisation.sql
-- from the first tier's buckets: avg, p95 and max of the per-bucket values ("p95 of 5-minute
-- averages" with the default policy). A period is stored once the first tier has rolled it up
-- whole (its end at or before that tier's watermark); the open period is computed when read.

CREATE TABLE perfwatch.utilisation_summary (
    period            text NOT NULL CHECK (period IN ('hour', 'day', 'week', 'month')),
    period_start      timestamptz NOT NULL,
    job               text NOT NULL,
    instance          text NOT NULL,
    step              interval NOT NULL,   -- width of the buckets the statistics are over
    buckets           integer NOT NULL,    -- buckets with a CPU value
    expected          integer NOT NULL,    -- buckets in the period
    cpu_avg           double precision,    -- ratios 0-1: busy share of all CPU time
    cpu_p95           double precision,
    cpu_max           double precision,
    memory_avg        double precision,    -- 1 - MemAvailable / MemTotal
    memory_p95        double precision,
    memory_max        double precision,
    disk_p95          double precision,    -- busiest device's share of time busy
    disk_max          double precision,
    network_p95       double precision,    -- bytes/s received + transmitted, all devices but lo
    network_max       double precision,
    network_share_p95 double precision,    -- busiest device and direction's share of its speed
    computed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (period, period_start, job, instance)
);
CREATE INDEX utilisation_summary_host ON perfwatch.utilisation_summary (job, instance, period, period_start);

-- Per period kind: every period that ends at or before the watermark is summarised (NULL: none yet).
CREATE TABLE perfwatch.utilisation_state (
    period           text PRIMARY KEY CHECK (period IN ('hour', 'day', 'week', 'month')),
    watermark        timestamptz,
    last_run_at      timestamptz,
    last_run_seconds double precision,
    last_run_rows    bigint
);
INSERT INTO perfwatch.utilisation_state (period) VALUES ('hour'), ('day'), ('week'), ('month');

-- Raw time ranges [lo, hi] whose first-tier buckets are rolled up again for late samples (copied
-- from perfwatch.rollup_dirty by a trigger): the summaries of the periods they touch are computed
-- again once that rollup is done.
CREATE TABLE perfwatch.utilisation_dirty (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lo       timestamptz NOT NULL,
    hi       timestamptz NOT NULL,
    noted_at timestamptz NOT NULL DEFAULT now()
);

-- The right-sizing thresholds of the archiver's config (`rightsizing:`), mirrored so that Grafana's
-- recommendations use the same numbers as `perfwatch-archiver report`.
CREATE TABLE perfwatch.rightsizing_threshold (
    name       text PRIMARY KEY,
    value      double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
