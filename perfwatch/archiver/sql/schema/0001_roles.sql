-- perfwatch: run-as session
-- Roles and privileges. This one migration runs as the connecting user (it must be able to create
-- roles the first time: a superuser, or CREATEROLE and owner of the database); every later one runs
-- as perfwatch_writer, so that the writer owns the archive and can keep partitions up by itself.
--
-- perfwatch_writer   owns schema perfwatch and everything in it; no rights anywhere else.
-- perfwatch_grafana  USAGE on the schema, SELECT on its tables, EXECUTE on the read functions;
--                    read-only transactions and a statement timeout by default.
-- Both are NOLOGIN: a role without a password that can log in is open wherever pg_hba says
-- "trust". Operators give them a password and LOGIN (ALTER ROLE ... LOGIN PASSWORD ...).

-- Roles are cluster-wide, and many databases (tests: one per test) share a server: create each role
-- only when missing, tolerate a concurrent creator, and set its defaults only when we created it so
-- an operator's later ALTER ROLE is kept.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'perfwatch_writer') THEN
        BEGIN
            CREATE ROLE perfwatch_writer NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'perfwatch_grafana') THEN
        BEGIN
            CREATE ROLE perfwatch_grafana NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
            ALTER ROLE perfwatch_grafana SET default_transaction_read_only = on;
            ALTER ROLE perfwatch_grafana SET statement_timeout = '30s';
            ALTER ROLE perfwatch_grafana SET search_path = perfwatch, public;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

ALTER SCHEMA perfwatch OWNER TO perfwatch_writer;
ALTER TABLE perfwatch.schema_migration OWNER TO perfwatch_writer;
GRANT USAGE ON SCHEMA perfwatch TO perfwatch_grafana;

-- Per database. TEMPORARY is revoked from PUBLIC because "cannot create" must hold for Grafana even
-- for temporary tables; the writer keeps it (the store stages replayed batches in a temp table).
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO perfwatch_writer', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO perfwatch_grafana', current_database());
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    -- PostgreSQL 14 still lets PUBLIC create in schema public (15 no longer does).
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'public') THEN
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    END IF;
END
$$;

-- Everything the writer creates later (tier tables, partitions) is readable by Grafana, and no
-- function of the writer's is callable by PUBLIC: the read functions are granted one by one.
ALTER DEFAULT PRIVILEGES FOR ROLE perfwatch_writer IN SCHEMA perfwatch GRANT SELECT ON TABLES TO perfwatch_grafana;
ALTER DEFAULT PRIVILEGES FOR ROLE perfwatch_writer REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
