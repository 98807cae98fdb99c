"""Migrations and roles against a real PostgreSQL: applied once, in order, under a lock, refused
when edited after the fact; the writer owns the archive and nothing else; the Grafana role
reads and cannot change anything."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import threading
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from support.archive import batches, login_as, synthetic
from support.postgres import PostgresServer, scalar

from perfwatch.archiver import db
from perfwatch.archiver.migrate import FUNCTIONS_DIR, SCHEMA_DIR, MigrationError, apply_migrations
from perfwatch.archiver.policy import Policy, mirror_policy
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.status import tier_status
from perfwatch.archiver.store import Store

ALL = ["0001_roles.sql", "0002_catalog.sql", "0003_archive.sql", "0004_functions_leave_the_migrations.sql",
       "0005_partition_drops.sql", "0006_reader_limits.sql", "0007_packed_samples.sql", "0008_alert_history.sql",
       "0009_utilisation.sql"]
APPLIED = sa.text("SELECT name FROM perfwatch.schema_migration ORDER BY version")


def test_migrations_apply_once_in_order_and_are_recorded(pg_dsn: str) -> None:
    engine = db.make_engine(pg_dsn)
    assert apply_migrations(engine) == ALL
    assert apply_migrations(engine) == []
    with engine.connect() as conn:
        assert conn.execute(APPLIED).scalars().all() == ALL
        # The writer owns everything the migrations made, so it can keep partitions up alone.
        owners = conn.execute(sa.text(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = 'perfwatch'::regnamespace "
            "UNION SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE pronamespace = 'perfwatch'::regnamespace "
            "UNION SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'perfwatch'")).scalars().all()
        assert owners == ["perfwatch_writer"]
    engine.dispose()


def test_an_edited_or_failing_migration_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    migrations = tmp_path / "schema"
    shutil.copytree(SCHEMA_DIR, migrations)
    engine = db.make_engine(pg_dsn)
    assert apply_migrations(engine, migrations) == ALL
    (migrations / "0099_broken.sql").write_text("CREATE TABLE perfwatch.half_done (a int);\nSELEC 1;\n")
    with pytest.raises(MigrationError, match=r"0099_broken.sql failed: syntax error at or near \"SELEC\""):
        apply_migrations(engine, migrations)
    with engine.connect() as conn:  # its transaction rolled back: no half-applied file
        assert conn.execute(sa.select(sa.func.to_regclass("perfwatch.half_done"))).scalar() is None
        assert conn.execute(sa.text("SELECT max(version) FROM perfwatch.schema_migration")).scalar() == 9
    (migrations / "0099_broken.sql").unlink()
    path = migrations / "0002_catalog.sql"
    path.write_text(path.read_text() + "\n-- an afterthought\n")
    with pytest.raises(MigrationError, match=r"0002_catalog\.sql was changed after it was applied"):
        apply_migrations(engine, migrations)
    (migrations / "7_bad_name.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"named NNNN_name\.sql"):
        apply_migrations(engine, migrations)
    engine.dispose()


def test_functions_are_reapplied_at_every_migrate_without_a_migration(pg_dsn: str, tmp_path: Path) -> None:
    """A changed function body takes effect at the next start; no numbered file is needed for it."""
    functions = tmp_path / "functions"
    shutil.copytree(FUNCTIONS_DIR, functions)
    engine = db.make_engine(pg_dsn)
    assert apply_migrations(engine, SCHEMA_DIR, functions) == ALL
    legend = functions / "read.sql"
    legend.write_text(legend.read_text().replace("RETURN regexp_replace(result, '\\{\\{[^}]*\\}\\}', '', 'g');",
                                                 "RETURN 'changed: ' || result;"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT perfwatch.format_legend('{{a}}', '{}')")).scalar() == ""
    assert apply_migrations(engine, SCHEMA_DIR, functions) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT perfwatch.format_legend('{{a}}', '{}')")).scalar() == "changed: {{a}}"
    (functions / "zz_broken.sql").write_text("CREATE OR REPLACE FUNCTION perfwatch.f() RETURNS int LANGUAGE sql "
                                             "RETURN nope;")
    with pytest.raises(MigrationError, match=r"applying the archive's functions failed: .*nope"):
        apply_migrations(engine, SCHEMA_DIR, functions)
    engine.dispose()


def function_definitions() -> dict[str, list[str]]:
    """Function name → the files under sql/ that define it."""
    defined: dict[str, list[str]] = {}
    sql_dir = SCHEMA_DIR.parent
    for path in sorted(sql_dir.rglob("*.sql")):
        text = path.read_text()
        for name in re.findall(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+perfwatch\.(\w+)\s*\(", text, re.I):
            defined.setdefault(name, []).append(str(path.relative_to(sql_dir)))
    return defined


def test_every_function_has_one_definition_in_the_tree(pg_dsn: str) -> None:
    """Each function's text lives in one file: the numbered migrations define none but labels_hash,
    which the series table's generated column needs before any function file runs. And the
    database holds exactly the functions the tree defines (nothing left over from an old body)."""
    defined = function_definitions()
    assert {name: files for name, files in defined.items() if len(files) != 1} == {}
    in_schema = {name for name, files in defined.items() if files[0].startswith("schema/")}
    assert in_schema == {"labels_hash"}
    engine = db.make_engine(pg_dsn)
    apply_migrations(engine)
    with engine.connect() as conn:
        in_database = conn.execute(sa.text("SELECT proname FROM pg_proc WHERE pronamespace = "
                                           "'perfwatch'::regnamespace")).scalars().all()
    engine.dispose()
    assert sorted(in_database) == sorted(defined)


def test_archivers_starting_together_apply_each_migration_once(pg_dsn: str) -> None:
    """On a new database: they race to create the schema, then each file is applied by one of them
    (the lock is taken per file, so which one may change from file to file), in order."""
    engines = [db.make_engine(pg_dsn) for _ in range(3)]
    results: list[list[str] | BaseException] = []

    def start(engine: sa.Engine) -> None:
        try:
            results.append(apply_migrations(engine))
        except BaseException as err:
            results.append(err)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and all(isinstance(r, list) for r in results), results
    applied = [r for r in results if isinstance(r, list)]  # all of them, as just asserted
    assert sorted(name for r in applied for name in r) == ALL
    assert all(r == sorted(r) for r in applied)
    with engines[0].connect() as conn:
        rows = conn.execute(sa.text("SELECT name, applied_at FROM perfwatch.schema_migration ORDER BY version")).all()
    assert [name for name, _ in rows] == ALL
    assert [at for _, at in rows] == sorted(at for _, at in rows)  # each after the one before, whoever applied it
    for e in engines:
        e.dispose()


def test_roles_are_shared_by_databases_and_granted_in_each(postgres_server: PostgresServer, pg_dsn: str) -> None:
    with postgres_server.fresh_database() as other:
        for dsn in (pg_dsn, other):
            engine = db.make_engine(dsn)
            assert apply_migrations(engine) == ALL
            engine.dispose()
            with psycopg.connect(dsn) as conn:
                assert conn.execute("SELECT has_schema_privilege('perfwatch_grafana', 'perfwatch', 'USAGE'), "
                                    "has_database_privilege('perfwatch_grafana', current_database(), 'CONNECT'), "
                                    "has_database_privilege('perfwatch_writer', current_database(), 'TEMPORARY')"
                                    ).fetchone() == (True, True, True)
    with psycopg.connect(postgres_server.admin_dsn) as conn:
        assert conn.execute("SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles "
                            "WHERE rolname LIKE 'perfwatch\\_%' ORDER BY 1").fetchall() == [
            ("perfwatch_grafana", False, False, False, False), ("perfwatch_writer", False, False, False, False)]


@pytest.fixture
def archive(pg_dsn: str) -> str:
    """A migrated database holding a few hours of rolled-up data."""
    engine = db.make_engine(pg_dsn)
    apply_migrations(engine)
    start = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    store = Store(engine)
    for b in batches(synthetic(start, 2, interval_s=60)):
        store.write(b)
    run_rollups(engine, Policy(), start + dt.timedelta(hours=2))
    engine.dispose()
    return pg_dsn


def test_grafana_role_is_read_only_with_a_statement_timeout(archive: str) -> None:
    with login_as("perfwatch_grafana", archive) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
            assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
            assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("1min",)
            assert conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user").fetchone() == (16,)
            assert scalar(conn, "SELECT count(*) FROM perfwatch.series") == 5
            assert scalar(conn, "SELECT count(*) FROM perfwatch.rollup_5m") > 0
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO perfwatch.metric (name, kind, family_type) VALUES ('x', 'gauge', 'gauge')")
        # Read-only is only a default a session may lift; privileges are what stop it.
        attempts = [
            "INSERT INTO perfwatch.metric (name, kind, family_type) VALUES ('x', 'gauge', 'gauge')",
            "INSERT INTO perfwatch.sample VALUES (1, now(), 1)",
            "UPDATE perfwatch.sample SET value = 0",
            "UPDATE perfwatch.tier SET watermark = NULL",
            "DELETE FROM perfwatch.series",
            "DELETE FROM perfwatch.rollup_1h",
            "TRUNCATE perfwatch.sample",
            "CREATE TABLE perfwatch.mine (a int)",
            "CREATE TABLE public.mine (a int)",
            "CREATE TEMPORARY TABLE mine (a int)",
            "CREATE FUNCTION perfwatch.f() RETURNS int LANGUAGE sql RETURN 1",
            "CREATE SCHEMA mine",
            "DROP TABLE perfwatch.sample",
            "ALTER TABLE perfwatch.series ADD COLUMN x int",
            "SELECT perfwatch.ensure_partition('raw', now() + interval '30 days')",
            "SELECT perfwatch.create_tier('1m', '1 minute')",
            "SELECT perfwatch.set_policy('{raw}', '{0}', '{1 day}')",
            "SELECT * FROM perfwatch.upsert_metrics('{x}', '{gauge}', '{gauge}', '{\"\"}', '{\"\"}')",
            "SELECT * FROM perfwatch.upsert_series('{1}', '{\"{}\"}', ARRAY[now()])",
            "SELECT perfwatch.touch_series('{1}', now())",
            "SELECT * FROM perfwatch.expire_partitions('raw', now() + interval '100 years')",
            "SELECT perfwatch.partition_dropped('sample_20240601')",
            "SELECT perfwatch.rollup_range('5m', '2024-06-01', '2024-06-02')",
            "SELECT perfwatch.note_late('5m', now(), now())",
            "SET ROLE perfwatch_writer",
        ]
        for statement in attempts:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SET default_transaction_read_only = off")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
    with psycopg.connect(archive) as conn:  # nothing changed
        assert scalar(conn, "SELECT count(*) FROM perfwatch.series") == 5
        assert scalar(conn, "SELECT count(*) FROM perfwatch.partition WHERE tier = 'raw'") == 1


def test_the_archive_runs_as_the_writer_role(archive: str) -> None:
    """Logged in as perfwatch_writer: store, rollup, retention and status work; the writer is no
    superuser and cannot touch anything outside the archive."""
    with psycopg.connect(archive, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.not_the_archive (a int)")
    with login_as("perfwatch_writer", archive) as dsn:
        engine = db.make_engine(dsn)
        assert apply_migrations(engine) == []
        policy = Policy()
        mirror_policy(engine, policy)
        start = dt.datetime(2024, 6, 1, 2, tzinfo=dt.UTC)
        store = Store(engine)
        for b in batches(synthetic(start, 24 * 9, interval_s=1800, seed=5)):
            store.write(b)
        now = start + dt.timedelta(days=9)
        runs = run_rollups(engine, policy, now)
        assert runs[0].watermark_after is not None and runs[0].buckets_written > 0
        retention = run_retention(engine, policy, now)
        assert "sample_20240601" in retention.dropped  # created by the superuser's writes, dropped by the writer
        assert {s.tier for s in tier_status(engine, policy)} == {"raw", "5m", "1h"}
        engine.dispose()
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
            for statement in ("SELECT * FROM public.not_the_archive", "INSERT INTO public.not_the_archive VALUES (1)",
                              "CREATE TABLE public.mine (a int)", "CREATE SCHEMA mine", "CREATE ROLE someone",
                              "CREATE DATABASE mine"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
