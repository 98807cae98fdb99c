"""perfwatch-archiver as a real process for tests, and what it wrote, read back from PostgreSQL."""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import requests
import yaml

from support.exposition import values
from support.procs import Service, free_port, python_module
from support.waiting import wait_until

RUNNING: list[ArchiverProcess] = []  # started and not yet stopped, for stop_leftovers()


def stop_leftovers() -> None:
    """Stop archivers a failed test left running (SIGTERM, so an embedded server stops too)."""
    while RUNNING:
        archiver = RUNNING.pop()
        if archiver.service.running:
            with contextlib.suppress(RuntimeError):  # it ignored SIGTERM: Service.stop has killed it
                archiver.service.stop(signal.SIGTERM, timeout=30)


class ArchiverProcess:
    """An archiver on a free loopback port with `config` (a dict written to YAML) and data in `data_dir`."""

    def __init__(self, workdir: Path, config: dict[str, Any], *args: str, name: str = "archiver",
                 auth: tuple[str, str] | None = None) -> None:
        """`auth`: the basic-auth user and password its web config (args) asks for."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = auth
        userinfo = f"{quote(auth[0], safe='')}:{quote(auth[1], safe='')}@" if auth else ""
        config = {"listen": f"127.0.0.1:{self.port}", "data_dir": str(workdir / "data"), **config}
        self.config_path = workdir / f"{name}-{self.port}.yml"
        self.config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
        self.service = Service(python_module("perfwatch.archiver", "--config", str(self.config_path), *args),
                               workdir / f"{name}.log", ready_url=f"http://{userinfo}127.0.0.1:{self.port}/-/ready",
                               ready_timeout=60)

    def start(self) -> ArchiverProcess:
        RUNNING.append(self)
        self.service.start()
        return self

    def metrics(self) -> str:
        r = requests.get(f"{self.url}/metrics", timeout=10, auth=self.auth)
        assert r.status_code == 200, r.text
        return r.text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of `name` over the series carrying `labels` (0 when none)."""
        found = values(self.metrics(), name)
        return sum(v for key, v in found.items() if all((k, val) in key for k, val in labels.items()))

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """wait_until(condition), failing at once if the archiver exits; either failure shows its log."""
        def reached() -> bool:
            if condition():
                return True
            if not self.service.running:
                raise AssertionError(f"archiver exited while waiting for {what}:\n{self.service.log()[-5000:]}")
            return False

        wait_until(reached, what, timeout, interval=0.1,
                   details=lambda: f"--- archiver log ---\n{self.service.log()[-5000:]}")

    def stop(self, signum: int | None = None) -> int:
        if self in RUNNING:
            RUNNING.remove(self)
        return self.service.stop(signum or signal.SIGTERM, timeout=30)


def archived(dsn: str, metric: str) -> list[tuple[dict[str, str], int, float]]:
    """(labels, ms, value) of every raw sample of `metric`, in time order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT s.labels, (extract(epoch FROM x.ts) * 1000)::bigint, x.value"
            " FROM perfwatch.sample x JOIN perfwatch.series s ON s.id = x.series_id"
            " JOIN perfwatch.metric m ON m.id = s.metric_id WHERE m.name = %s ORDER BY x.ts, s.id",
            (metric,)).fetchall()
    return [(labels, int(ms), float(value)) for labels, ms, value in rows]


def scrape_numbers(dsn: str) -> list[int]:
    """Which of the synthetic exporter's scrapes are archived (one entry per stored sample)."""
    return [int(v) for _, _, v in archived(dsn, "synthetic_scrape_number") if not math.isnan(v)]
