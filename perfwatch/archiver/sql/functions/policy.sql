-- The downsampling and retention policy, mirrored from the archiver's config into
-- perfwatch.archive_policy so that Grafana and operators can see it.

-- Make archive_policy hold exactly the levels given: p_tiers[1] is 'raw' (resolution 0), then the
-- tiers fine to coarse, each with its resolution and retention. Creates the tier tables it needs.
-- Levels no longer in the policy leave the mirror (their tables and data stay); last-run figures
-- are kept for the levels that remain.
CREATE OR REPLACE FUNCTION perfwatch.set_policy(p_tiers text[], p_resolutions interval[], p_retentions interval[])
    RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, perfwatch AS $$
BEGIN
    IF p_tiers[1] IS DISTINCT FROM 'raw' OR cardinality(p_tiers) <> cardinality(p_resolutions)
       OR cardinality(p_tiers) <> cardinality(p_retentions) THEN
        RAISE EXCEPTION 'a policy is raw then its tiers, each with a resolution and a retention';
    END IF;
    FOR i IN 2 .. cardinality(p_tiers) LOOP
        PERFORM perfwatch.create_tier(p_tiers[i], p_resolutions[i]);
    END LOOP;
    DELETE FROM perfwatch.archive_policy WHERE tier <> ALL (p_tiers);
    -- Levels are unique: move them out of the way first so tiers can swap places.
    UPDATE perfwatch.archive_policy SET level = -level - 1 WHERE level >= 0;
    INSERT INTO perfwatch.archive_policy (tier, level, resolution, retention)
        SELECT u.tier, u.n - 1, u.resolution, u.retention
        FROM unnest(p_tiers, p_resolutions, p_retentions) WITH ORDINALITY AS u(tier, resolution, retention, n)
    ON CONFLICT (tier) DO UPDATE SET level = excluded.level, resolution = excluded.resolution,
                                     retention = excluded.retention, updated_at = now();
END
$$;
