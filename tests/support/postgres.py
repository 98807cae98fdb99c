"""A real PostgreSQL for tests: the embedded server, or the one PERFWATCH_TEST_DSN names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.abc import QueryNoTemplate
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from perfwatch.archiver.embedded import EmbeddedPostgres


def scalar(conn: psycopg.Connection[Any], query: QueryNoTemplate) -> Any:
    """The first column of the first row `query` returns (failing if it returns no row)."""
    row = conn.execute(query).fetchone()
    assert row is not None, f"no row from {query!r}"
    return row[0]


class PostgresServer:
    """Where test databases are created: `admin_dsn` is a superuser DSN to its `postgres` db."""

    def __init__(self, admin_dsn: str, embedded: EmbeddedPostgres | None = None) -> None:
        self.admin_dsn = admin_dsn
        self.embedded = embedded

    @classmethod
    def start(cls, workdir: Path) -> PostgresServer:
        external = os.environ.get("PERFWATCH_TEST_DSN")
        if external:
            return cls(external)
        embedded = EmbeddedPostgres(workdir)
        embedded.start()
        return cls(embedded.dsn("postgres"), embedded)

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()

    def dsn_for(self, database: str) -> str:
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = database
        return make_conninfo("", **params)

    @contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A new empty database for one test; dropped afterwards."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.dsn_for(name)
        finally:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
