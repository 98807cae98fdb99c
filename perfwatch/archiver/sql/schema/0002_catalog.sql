-- The series catalog, Prometheus' data model: a metric is a sample name (foo_total, foo_bucket, bar),
-- a series is a metric plus its label set (the archiver adds job and instance).

CREATE TABLE perfwatch.metric (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    -- how it is rolled up: counters (…_total, histogram/summary _bucket/_sum/_count) get a
    -- reset-corrected increase, everything else is a gauge
    kind        text NOT NULL CHECK (kind IN ('counter', 'gauge')),
    family_type text NOT NULL,          -- as exposed: counter, gauge, histogram, summary, info, stateset, unknown
    help        text NOT NULL DEFAULT '',
    unit        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- convert_to() is only STABLE (conversions live in the catalog), but into UTF8 the result is a fixed
-- function of the input, which a generated column needs. jsonb's text form is canonical (keys sorted,
-- no duplicates), so equal label sets hash equally.
CREATE FUNCTION perfwatch.labels_hash(labels jsonb) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN sha224(convert_to(labels::text, 'UTF8'));

CREATE TABLE perfwatch.series (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    metric_id   integer NOT NULL REFERENCES perfwatch.metric (id),
    labels      jsonb NOT NULL CHECK (jsonb_typeof(labels) = 'object'),
    -- unique on a hash: a btree entry on the labels themselves is limited to ~2.7 kB
    labels_hash bytea NOT NULL GENERATED ALWAYS AS (perfwatch.labels_hash(labels)) STORED,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,   -- kept to within an hour (the store refreshes it hourly)
    UNIQUE (metric_id, labels_hash)
);
CREATE INDEX series_labels ON perfwatch.series USING gin (labels jsonb_path_ops);
