#!/bin/bash
# Runs once, when the postgres container initialises an empty data volume (docker-entrypoint-initdb.d).
# Creates the two login roles perfwatch uses, with the passwords from compose's secret files:
#   perfwatch_archiver  owns the database, so it can apply the archive's migrations (sql/);
#   perfwatch_grafana   logs in for Grafana; the migrations grant it read-only access.
set -euo pipefail
archiver_password="$(cat /run/secrets/archiver_db_password)"
grafana_password="$(cat /run/secrets/grafana_db_password)"
# psql variables (:'name') quote the passwords as SQL literals, whatever they contain.
psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v archiver_password="$archiver_password" -v grafana_password="$grafana_password" <<'SQL'
CREATE ROLE perfwatch_archiver LOGIN PASSWORD :'archiver_password';
CREATE ROLE perfwatch_grafana LOGIN PASSWORD :'grafana_password';
ALTER DATABASE :"DBNAME" OWNER TO perfwatch_archiver;
SQL
