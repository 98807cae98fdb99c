-- Run before the numbered migrations (under the migration lock): the schema and the table that
-- records which migrations are applied. 0001 hands both to perfwatch_writer.
CREATE SCHEMA IF NOT EXISTS perfwatch;
CREATE TABLE IF NOT EXISTS perfwatch.schema_migration (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,            -- sha256 of the file as applied
    applied_at timestamptz NOT NULL DEFAULT now()
);
