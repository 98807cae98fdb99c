"""The README's main command, scripts/run: exporter and archiver together, stopped together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from support.exposition import values
from support.procs import REPO, Service, free_port
from support.waiting import wait_until

from perfwatch.archiver.embedded import EmbeddedPostgres


@pytest.mark.slow
def test_scripts_run_archives_the_exporter_into_embedded_postgres_and_stops_both(tmp_path: Path) -> None:
    exporter_port, archiver_port = free_port(), free_port()
    data = tmp_path / "data"
    env = {"PERFWATCH_NO_INSTALL": "1", "PERFWATCH_DATA_DIR": str(data), "PERFWATCH_SCRAPE_INTERVAL": "500ms",
           "PERFWATCH_EXPORTER_PORT": str(exporter_port), "PERFWATCH_ARCHIVER_PORT": str(archiver_port)}
    archiver_url = f"http://127.0.0.1:{archiver_port}"
    run = Service([str(REPO / "scripts" / "run")], tmp_path / "run.log", env=env,
                  ready_url=f"{archiver_url}/-/ready", ready_timeout=90).start()
    try:
        assert requests.get(f"http://127.0.0.1:{exporter_port}/-/ready", timeout=10).status_code == 200
        wait_until_written(archiver_url, run)
    finally:
        status = run.stop(signal.SIGTERM, timeout=60)
    assert status == 0, run.log()
    for port in (exporter_port, archiver_port):
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
        except requests.ConnectionError:
            continue
        raise AssertionError(f"something still answers on {port} after scripts/run stopped")
    assert not EmbeddedPostgres(data / "postgres").running()
    assert "perfwatch-exporter" in run.log() and "perfwatch-archiver" in run.log()


def wait_until_written(url: str, service: Service, timeout: float = 60.0) -> None:
    """Until the archiver has written samples scraped from the exporter (job perfwatch)."""
    def written_and_up() -> bool:
        text = requests.get(f"{url}/metrics", timeout=10).text
        written = values(text, "perfwatch_archiver_samples_written_total")
        up = values(text, "perfwatch_archiver_target_up")
        if any(v > 0 for v in written.values()) and up and all(v == 1 for v in up.values()):
            assert all(("job", "perfwatch") in key for key in written)
            return True
        return False

    wait_until(written_and_up, "the archiver to write samples from the exporter", timeout, interval=0.2,
               details=lambda: service.log()[-4000:])


def test_scripts_run_stops_the_archiver_when_the_exporter_cannot_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        exporter_port, archiver_port = taken.getsockname()[1], free_port()
        env = {"PERFWATCH_NO_INSTALL": "1", "PERFWATCH_DATA_DIR": str(tmp_path / "data"),
               "PERFWATCH_EXPORTER_PORT": str(exporter_port), "PERFWATCH_ARCHIVER_PORT": str(archiver_port)}
        run = subprocess.run([str(REPO / "scripts" / "run")], env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=120, cwd=REPO)
    assert run.returncode == 1, run.stderr
    assert "cannot listen" in run.stderr
    assert not EmbeddedPostgres(tmp_path / "data" / "postgres").running()
