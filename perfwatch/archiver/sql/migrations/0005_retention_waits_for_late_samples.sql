-- Retention also keeps a partition while late samples in it wait for this tier's own rollup.
--
-- drop_expired (0003) kept a partition the next tier had not rolled up, or whose period had late
-- samples waiting for the next tier. Late samples still waiting for this tier itself (noted in
-- rollup_dirty under this tier's name, not passed on yet) were not looked at: when two adjacent
-- levels keep data equally long (the policy allows it), raw waited for the first tier, the first
-- tier's partition of the same period expired in the same pass and was dropped, and the late
-- samples never reached the tier above. Unchanged otherwise.
CREATE OR REPLACE FUNCTION perfwatch.drop_expired(p_tier text, p_now timestamptz)
    RETURNS TABLE (partition text, lo timestamptz, hi timestamptz, dropped boolean)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, perfwatch AS $$
DECLARE
    pol perfwatch.archive_policy;
    nxt perfwatch.tier;
    has_next boolean;
    p perfwatch.partition;
    blocked boolean := false;
BEGIN
    SELECT * INTO pol FROM perfwatch.archive_policy ap WHERE ap.tier = p_tier;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tier % is not in the active policy', p_tier;
    END IF;
    PERFORM pg_advisory_xact_lock(1885696614, 2);
    IF pol.level = 0 THEN
        PERFORM pg_advisory_xact_lock(1885696614, 3);
    END IF;
    SELECT s.* INTO nxt FROM perfwatch.archive_policy above JOIN perfwatch.tier s ON s.name = above.tier
        WHERE above.level = pol.level + 1;
    has_next := FOUND;
    FOR p IN SELECT * FROM perfwatch.partition pp WHERE pp.tier = p_tier AND pp.hi <= p_now - pol.retention
             ORDER BY pp.lo LOOP
        blocked := blocked OR (has_next AND (nxt.watermark IS NULL OR p.hi > nxt.watermark
                     OR EXISTS (SELECT FROM perfwatch.rollup_dirty d
                                WHERE d.tier IN (nxt.name, p_tier) AND d.lo < p.hi)));
        partition := p.table_name;
        lo := p.lo;
        hi := p.hi;
        dropped := NOT blocked;
        IF dropped THEN
            EXECUTE format('DROP TABLE perfwatch.%I', p.table_name);
            DELETE FROM perfwatch.partition pp WHERE pp.tier = p_tier AND pp.lo = p.lo;
            UPDATE perfwatch.tier SET horizon = greatest(horizon, p.hi) WHERE name = p_tier;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
