-- Run before the numbered migrations (under the migration lock): the schema and the table that
-- records which migrations are applied. 0001 hands both to perfwatch_writer.
-- (CREATE SCHEMA IF NOT EXISTS would still need CREATE on the database, which the writer lacks.)
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'perfwatch') THEN
        CREATE SCHEMA perfwatch;
    END IF;
END
$$;
CREATE TABLE IF NOT EXISTS perfwatch.schema_migration (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,            -- sha256 of the file as applied
    applied_at timestamptz NOT NULL DEFAULT now()
);
