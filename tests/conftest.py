from __future__ import annotations

import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests
import yaml
from support.archiver import stop_leftovers
from support.pki import PKI
from support.postgres import PostgresServer
from support.procs import Service, free_port, python_module

from perfwatch.archiver.embedded import EmbeddedPostgres


class Exporter:
    """A perfwatch-exporter process on a free loopback port."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None, args: list[str],
                 user: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = python_module("perfwatch.exporter", "--listen", f"127.0.0.1:{self.port}", *args)
        if config is not None:
            path = workdir / f"exporter-{self.port}.yml"
            path.write_text(yaml.safe_dump(config))
            path.chmod(0o644)
            argv += ["--config", str(path)]
        # As another user, drop root's group and supplementary groups too (see Service).
        group = pwd.getpwnam(user).pw_gid if user else None
        extra_groups: list[str | int] | None = [] if user else None
        self.service = Service(argv, workdir / f"exporter-{self.port}.log", ready_url=f"{self.url}/-/ready",
                               user=user, group=group, extra_groups=extra_groups)

    def scrape(self, **kwargs: Any) -> str:
        r = requests.get(f"{self.url}/metrics", timeout=30, **kwargs)
        assert r.status_code == 200, r.text
        return r.text

    def stop(self) -> int:
        return self.service.stop()


class StartExporter(Protocol):
    """The start_exporter fixture's type."""

    def __call__(self, config: dict[str, Any] | None = None, *args: str, user: str | None = None) -> Exporter: ...


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[StartExporter]:
    """Start exporters (config dict, extra args); each is stopped with SIGTERM at the end."""
    started: list[Exporter] = []

    def start(config: dict[str, Any] | None = None, *args: str, user: str | None = None) -> Exporter:
        exporter = Exporter(tmp_path, config, list(args), user=user)
        exporter.service.start()
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        if exporter.service.running:
            exporter.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real PostgreSQL for the session (embedded, or PERFWATCH_TEST_DSN)."""
    server = PostgresServer.start(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A DSN (superuser) to a fresh, empty database of its own for this test."""
    with postgres_server.fresh_database() as dsn:
        yield dsn


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server for this test alone (about a second to start), which it may stop and start."""
    pg = EmbeddedPostgres(tmp_path / "pg")
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture
def stop_leftover_archivers() -> Iterator[None]:
    """Stop, after the test, the archivers (support.archiver) it left running, even when it failed.

    Modules that start archivers request it for every test:
    `pytestmark = pytest.mark.usefixtures("stop_leftover_archivers")`."""
    yield
    stop_leftovers()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """CAs, a server certificate for 127.0.0.1 and client certificates (support.pki), made once; read-only."""
    return PKI(tmp_path_factory.mktemp("pki"))
