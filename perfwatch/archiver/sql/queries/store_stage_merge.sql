-- Idempotent: rows already stored (a replay) are skipped, and so is a repeated sample of a series
-- inside one batch (the first one wins).
INSERT INTO perfwatch.sample (series_id, ts, value)
SELECT series_id, ts, value FROM perfwatch_stage
ON CONFLICT (series_id, ts) DO NOTHING
