#!/bin/bash
# Runs once, when the postgres container initialises an empty data volume (docker-entrypoint-initdb.d),
# before the archiver's first start: gives the archive's two roles a login and the passwords from
# compose's secret files. The archive's first migration (perfwatch/archiver/sql/schema/0001_roles.sql) finds the
# roles existing and leaves them as they are here:
#   perfwatch_writer   the archiver's login; owns the database, so it applies the migrations
#                      and owns the archive;
#   perfwatch_grafana  Grafana's login; the migrations grant it read access. 0001 and 0006 give it
#                      these settings, but changing a role takes CREATEROLE, which the writer
#                      lacks, so they are set here: read-only transactions, a statement timeout, an
#                      idle-in-transaction timeout, the archive's schema on the search path and a
#                      connection limit (the writer keeps headroom).
set -euo pipefail
secrets="${PERFWATCH_SECRETS_DIR:-/run/secrets}"
writer_password="$(<"$secrets/archiver_db_password")"
grafana_password="$(<"$secrets/grafana_db_password")"
# psql's :'name' quotes the passwords as SQL literals, whatever they contain.
psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v writer_password="$writer_password" -v grafana_password="$grafana_password" <<'SQL'
CREATE ROLE perfwatch_writer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'writer_password';
CREATE ROLE perfwatch_grafana LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'grafana_password';
ALTER ROLE perfwatch_grafana SET default_transaction_read_only = on;
ALTER ROLE perfwatch_grafana SET statement_timeout = '30s';
ALTER ROLE perfwatch_grafana SET search_path = perfwatch, public;
ALTER ROLE perfwatch_grafana SET idle_in_transaction_session_timeout = '1min';
ALTER ROLE perfwatch_grafana CONNECTION LIMIT 16;
ALTER DATABASE :"DBNAME" OWNER TO perfwatch_writer;
SQL
