-- Retention: drop whole partitions once they are past their level's retention AND the next tier
-- has them (Thanos users lost data when raw retention ran out before downsampling caught up).
-- perfwatch/archiver/retention.py drives it: expire (here, one transaction), then detach and drop
-- each queued table (DDL of its own, under lock_timeout).

-- Retention for p_tier: expire each partition that ended more than its retention before p_now AND
-- that the next tier has rolled up completely: its watermark at or past the partition's end, and
-- no late samples there still waiting, neither for the next tier nor for this tier's own rollup
-- (when two adjacent levels keep data equally long, the second would otherwise expire before the
-- late samples reached the tier above). An expired partition leaves the catalog and the tier's
-- horizon moves past it (writes refuse that period from now on); its table is queued in
-- perfwatch.partition_drop for the archiver to detach and drop outside this transaction (see
-- schema 0005). Expired partitions kept for the second reason are returned with dropped = false.
-- Raw data is the head's and the packed chunks' partitions (level_partitions), and late samples.
-- Oldest first, so the horizon only moves on.
CREATE OR REPLACE FUNCTION perfwatch.expire_partitions(p_tier text, p_now timestamptz)
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
    LOCK TABLE perfwatch.lock_rollup IN EXCLUSIVE MODE;
    IF pol.level = 0 THEN
        LOCK TABLE perfwatch.lock_raw_write IN EXCLUSIVE MODE;
    END IF;
    SELECT s.* INTO nxt FROM perfwatch.archive_policy above JOIN perfwatch.tier s ON s.name = above.tier
        WHERE above.level = pol.level + 1;
    has_next := FOUND;
    FOR p IN SELECT * FROM perfwatch.level_partitions(p_tier) pp WHERE pp.hi <= p_now - pol.retention
             ORDER BY pp.lo, pp.tier LOOP
        blocked := blocked OR (has_next AND (nxt.watermark IS NULL OR p.hi > nxt.watermark
                     OR EXISTS (SELECT FROM perfwatch.rollup_dirty d
                                WHERE d.tier IN (nxt.name, p_tier) AND d.lo < p.hi)));
        partition := p.table_name;
        lo := p.lo;
        hi := p.hi;
        dropped := NOT blocked;
        IF dropped THEN
            INSERT INTO perfwatch.partition_drop (table_name, parent, tier, lo, hi)
                SELECT p.table_name, t.table_name, p.tier, p.lo, p.hi FROM perfwatch.tier t WHERE t.name = p.tier;
            DELETE FROM perfwatch.partition pp WHERE pp.tier = p.tier AND pp.lo = p.lo;
            UPDATE perfwatch.tier SET horizon = greatest(horizon, p.hi) WHERE name IN (p_tier, p.tier);
            IF pol.level = 0 THEN
                DELETE FROM perfwatch.sample_late l WHERE l.ts < p.hi;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- The partitions waiting to be detached and dropped, in the order they were queued, with whether each is still a
-- partition of its table and whether a detach of it was interrupted (it must be FINALIZEd).
CREATE OR REPLACE FUNCTION perfwatch.pending_drops()
    RETURNS TABLE (table_name text, parent text, attached boolean, detach_pending boolean)
    LANGUAGE sql STABLE SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        SELECT d.table_name, d.parent, i.inhrelid IS NOT NULL, coalesce(i.inhdetachpending, false)
        FROM perfwatch.partition_drop d
        LEFT JOIN pg_catalog.pg_inherits i
               ON i.inhrelid = to_regclass('perfwatch.' || quote_ident(d.table_name))
              AND i.inhparent = to_regclass('perfwatch.' || quote_ident(d.parent))
        ORDER BY d.queued_at, d.lo;
    END;

-- The queued partition's table is gone.
CREATE OR REPLACE FUNCTION perfwatch.partition_dropped(p_table text) RETURNS void
    LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        DELETE FROM perfwatch.partition_drop WHERE table_name = p_table;
    END;

CREATE OR REPLACE FUNCTION perfwatch.record_retention(p_tier text, p_at timestamptz, p_seconds double precision,
                                           p_dropped integer, p_waiting integer)
    RETURNS void LANGUAGE sql SET search_path = pg_catalog, perfwatch
    BEGIN ATOMIC
        UPDATE perfwatch.archive_policy
           SET last_retention_at = p_at, last_retention_seconds = p_seconds,
               last_retention_dropped = p_dropped, last_retention_waiting = p_waiting
         WHERE tier = p_tier;
    END;
