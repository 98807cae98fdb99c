"""A real Alertmanager (Debian's `prometheus-alertmanager`) for tests, on loopback, alone (no cluster)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import requests
import yaml

from support.procs import Service, free_port

EXE = "prometheus-alertmanager"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Alertmanager's own checker (Debian's package ships it with the daemon)."""
    exe = shutil.which("amtool")
    if exe is None:
        raise RuntimeError("amtool not found: install Debian's prometheus-alertmanager package (scripts/test does)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


class Alertmanager:
    """Alertmanager on a free loopback port with the config given, its storage under `workdir`."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        exe = shutil.which(EXE) or (f"/usr/bin/{EXE}" if Path(f"/usr/bin/{EXE}").exists() else None)
        if exe is None:
            raise RuntimeError(f"{EXE} not found: install Debian's prometheus-alertmanager package (scripts/test does)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "alertmanager.yml"
        config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
        # --cluster.listen-address= turns gossip off: one instance, no port 9094 taken.
        self.service = Service(
            [exe, f"--config.file={config_path}", f"--storage.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            workdir / "alertmanager.log", ready_url=f"{self.url}/-/ready", ready_timeout=60)

    def __enter__(self) -> Alertmanager:
        self.service.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop()

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = requests.get(f"{self.url}/api/v2/alerts", timeout=10).json()
        return found

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Alerts straight into Alertmanager's API, as Prometheus sends them."""
        r = requests.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=10)
        assert r.status_code == 200, r.text


def webhook_config(url: str, *, group_wait: str = "1s", group_interval: str = "1s", repeat_interval: str = "1h",
                   basic_auth: tuple[str, str] | None = None) -> dict[str, Any]:
    """Every alert to one webhook receiver (resolutions too), grouped by alertname and instance."""
    webhook: dict[str, Any] = {"url": url, "send_resolved": True}
    if basic_auth:
        webhook["http_config"] = {"basic_auth": {"username": basic_auth[0], "password": basic_auth[1]}}
    return {"route": {"receiver": "archive", "group_by": ["alertname", "instance"], "group_wait": group_wait,
                      "group_interval": group_interval, "repeat_interval": repeat_interval},
            "receivers": [{"name": "archive", "webhook_configs": [webhook]}]}
