"""The embedded PostgreSQL the archiver starts when no DSN is configured."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from perfwatch.archiver.embedded import EmbeddedPostgres


def test_initialises_starts_stops_and_keeps_data(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "data")
    dsn = pg.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    pg.stop()
    assert not pg.running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    again = EmbeddedPostgres(tmp_path / "data").start()
    with psycopg.connect(again) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == ("still here",)
    pg.stop()


def test_listens_on_loopback_with_a_password(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "data")
    dsn = pg.start()
    try:
        assert (tmp_path / "data" / "password").stat().st_mode & 0o077 == 0
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        wrong = dsn.replace(pg.password, "wrong")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong, connect_timeout=5)
    finally:
        pg.stop()
