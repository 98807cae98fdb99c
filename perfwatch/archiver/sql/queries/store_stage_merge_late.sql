-- Samples for windows the compaction has packed already: into sample_late, where readers see them
-- until the compaction merges them into their chunks; a sample some chunk already holds (a
-- replay) is skipped, as the head's primary key skips it. Empties the staging table, which the
-- head's rows of the same batch may need next.
WITH staged AS (DELETE FROM perfwatch_stage RETURNING series_id, ts, value)
INSERT INTO perfwatch.sample_late (series_id, ts, value)
SELECT s.series_id, s.ts, s.value FROM staged s
WHERE NOT perfwatch.is_packed(s.series_id, s.ts, %s)
ON CONFLICT (series_id, ts) DO NOTHING
