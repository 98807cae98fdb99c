-- perfwatch: run-as session
-- Limits on the Grafana role itself, so that no dashboard can take the server's connections or
-- keep a transaction open for ever: a transaction left idle is ended after a minute, a statement
-- after 30 s (0001 set that only on a role it created), and the role has 16 connections at most
-- (of the server's max_connections, 100 by default), which leaves the writer its headroom. Where
-- the server has reserved_connections (PostgreSQL 16 and later), the writer may use them too.
-- Changing another role takes CREATEROLE or a superuser: an archiver connecting as the writer
-- alone (compose's) cannot, says so, and goes on; compose's init script sets the same.
DO $$
BEGIN
    ALTER ROLE perfwatch_grafana SET idle_in_transaction_session_timeout = '1min';
    ALTER ROLE perfwatch_grafana SET statement_timeout = '30s';
    ALTER ROLE perfwatch_grafana CONNECTION LIMIT 16;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'perfwatch: % may not change role perfwatch_grafana; as a superuser, run: ALTER ROLE '
        'perfwatch_grafana SET idle_in_transaction_session_timeout = ''1min''; ALTER ROLE perfwatch_grafana SET '
        'statement_timeout = ''30s''; ALTER ROLE perfwatch_grafana CONNECTION LIMIT 16;', current_user;
END
$$;

DO $$
BEGIN
    GRANT pg_use_reserved_connections TO perfwatch_writer;
EXCEPTION WHEN undefined_object OR insufficient_privilege OR invalid_grant_operation THEN
    NULL;  -- PostgreSQL 15 has no reserved connections; elsewhere it is the operator's choice
END
$$;
