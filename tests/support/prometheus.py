"""A real Prometheus server and promtool (Debian's `prometheus` package) for tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import requests
import yaml

from support.procs import Service, free_port
from support.waiting import wait_until


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        raise RuntimeError("promtool not found: install Debian's prometheus package (scripts/test does)")
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, timeout=120)


class Prometheus:
    """Prometheus on a free loopback port with the config given, storing into `workdir`."""

    def __init__(self, workdir: Path, config: dict[str, Any], port: int | None = None,
                 args: list[str] | None = None) -> None:
        exe = shutil.which("prometheus")
        if exe is None:
            raise RuntimeError("prometheus not found: install Debian's prometheus package (scripts/test does)")
        self.port = port or free_port()  # given when the config must name it (Prometheus scraping itself)
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.service = Service(
            [exe, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn", *(args or [])],
            workdir / "prometheus.log", ready_url=f"{self.url}/-/ready", ready_timeout=60,
        )

    def __enter__(self) -> Prometheus:
        self.service.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop()

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = requests.get(
            f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return targets

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll `expr` until it returns a non-empty result."""
        return wait_until(lambda: self.query(expr), f"{expr!r} to return a result", timeout, interval=0.5,
                          details=lambda: f"targets: {self.targets()}\n{self.service.log()}")
