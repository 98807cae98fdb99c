-- Per connection; emptied at every commit or rollback.
CREATE TEMPORARY TABLE IF NOT EXISTS perfwatch_stage (
    series_id integer NOT NULL,
    ts        timestamptz NOT NULL,
    value     double precision NOT NULL
) ON COMMIT DELETE ROWS
