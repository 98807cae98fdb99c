-- The series catalog, written by the store (perfwatch/archiver/store.py). Every statement takes
-- arrays, one element per metric or series, so a target's size never meets libpq's limit of
-- 65,535 bind parameters per statement (a multi-row VALUES of 16,384 series × 4 did).

-- Create the metrics named, or update their catalog facts where they changed; their ids.
CREATE OR REPLACE FUNCTION perfwatch.upsert_metrics(p_names text[], p_kinds text[], p_family_types text[],
                                                    p_helps text[], p_units text[])
    RETURNS TABLE (name text, id integer)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO perfwatch.metric AS m (name, kind, family_type, help, unit)
        SELECT * FROM unnest(p_names, p_kinds, p_family_types, p_helps, p_units)
    ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, family_type = excluded.family_type,
                                     help = excluded.help, unit = excluded.unit, updated_at = now()
        WHERE (m.kind, m.family_type, m.help, m.unit)
              IS DISTINCT FROM (excluded.kind, excluded.family_type, excluded.help, excluded.unit);
    RETURN QUERY SELECT m.name, m.id FROM perfwatch.metric m WHERE m.name = ANY (p_names);
END
$$;

-- The metrics named, created with the kinds given where the catalog has none of them: a name
-- whose samples came without metadata (remote_write sends it apart from the samples, once a
-- minute) gets a guess that never replaces what the catalog knows. Their ids and catalog facts.
CREATE OR REPLACE FUNCTION perfwatch.ensure_metrics(p_names text[], p_kinds text[])
    RETURNS TABLE (name text, id integer, kind text, family_type text, help text, unit text)
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
#variable_conflict use_column
BEGIN
    INSERT INTO perfwatch.metric AS m (name, kind, family_type, help, unit)
        SELECT n, k, 'unknown', '', '' FROM unnest(p_names, p_kinds) AS u(n, k)
    ON CONFLICT (name) DO NOTHING;
    RETURN QUERY SELECT m.name, m.id, m.kind, m.family_type, m.help, m.unit
        FROM perfwatch.metric m WHERE m.name = ANY (p_names);
END
$$;

-- Create the series given (metric id, labels as a JSON object text, first seen), or move an
-- existing one's last_seen on; the ids of all of them, existing ones included.
CREATE OR REPLACE FUNCTION perfwatch.upsert_series(p_metric_ids integer[], p_labels text[], p_seen timestamptz[])
    RETURNS TABLE (id integer, metric_id integer, labels jsonb, last_seen timestamptz)
    LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        -- DO UPDATE (not DO NOTHING) so that RETURNING gives the ids of series that already existed.
        INSERT INTO perfwatch.series AS s (metric_id, labels, first_seen, last_seen)
            SELECT u.metric_id, u.labels::jsonb, u.seen, u.seen FROM unnest(p_metric_ids, p_labels, p_seen)
                AS u(metric_id, labels, seen)
        ON CONFLICT (metric_id, labels_hash) DO UPDATE SET last_seen = greatest(s.last_seen, excluded.last_seen)
        RETURNING s.id, s.metric_id, s.labels, s.last_seen;
    END;

-- The series were seen at p_seen (the store calls this at most hourly per series).
CREATE OR REPLACE FUNCTION perfwatch.touch_series(p_ids integer[], p_seen timestamptz) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        UPDATE perfwatch.series SET last_seen = greatest(last_seen, p_seen) WHERE id = ANY (p_ids);
    END;
