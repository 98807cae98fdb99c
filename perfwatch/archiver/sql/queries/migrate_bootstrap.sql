-- Run before the numbered migrations: the schema and the table that records which migrations are
-- applied. 0001 hands both to perfwatch_writer.
-- (CREATE SCHEMA IF NOT EXISTS would still need CREATE on the database, which the writer lacks.)
-- No lock is held here (the migration lock is a lock on schema_migration itself, which does not
-- exist yet the first time): archivers starting together on a new database race, and whoever
-- loses a CREATE meets the winner's object (duplicate_*, or unique_violation on the catalog's
-- index while both were in flight) and goes on with it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'perfwatch') THEN
        BEGIN
            CREATE SCHEMA perfwatch;
        EXCEPTION WHEN duplicate_schema OR unique_violation THEN
            NULL;
        END;
    END IF;
    BEGIN
        CREATE TABLE IF NOT EXISTS perfwatch.schema_migration (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            checksum   text NOT NULL,            -- sha256 of the file as applied
            applied_at timestamptz NOT NULL DEFAULT now()
        );
    EXCEPTION WHEN duplicate_table OR unique_violation THEN
        NULL;
    END;
END
$$;
