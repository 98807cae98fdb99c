"""The exporter as a real process: CLI, config errors, HTTP endpoints, shutdown."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import requests
from support.exposition import names, value, values
from support.procs import REPO

if TYPE_CHECKING:
    from conftest import StartExporter


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfwatch.exporter", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_help_and_version() -> None:
    help_run = run_cli("--help")
    assert help_run.returncode == 0
    for option in ("--listen", "--config", "--log-level", "--version"):
        assert option in help_run.stdout
    version_run = run_cli("--version")
    assert version_run.returncode == 0
    assert version_run.stdout.startswith("perfwatch-exporter ")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return str(path)


def test_unknown_top_level_key_exits_2_and_names_it(tmp_path: Path) -> None:
    result = run_cli("--config", write(tmp_path, "listn: ':1'\n"))
    assert result.returncode == 2
    assert "listn" in result.stderr and "did you mean 'listen'" in result.stderr


def test_unknown_collector_option_exits_2_and_names_full_key(tmp_path: Path) -> None:
    result = run_cli("--config", write(tmp_path, "collectors:\n  cpu:\n    enabld: false\n"))
    assert result.returncode == 2
    assert "collectors.cpu.enabld" in result.stderr


def test_unknown_collector_exits_2(tmp_path: Path) -> None:
    result = run_cli("--config", write(tmp_path, "collectors:\n  cpuu: {}\n"))
    assert result.returncode == 2
    assert "collectors.cpuu" in result.stderr and "'cpu'" in result.stderr


def test_bad_value_type_exits_2_and_names_key(tmp_path: Path) -> None:
    result = run_cli("--config", write(tmp_path, "collectors:\n  meminfo:\n    enabled: 'yes'\n"))
    assert result.returncode == 2
    assert "collectors.meminfo.enabled" in result.stderr and "true or false" in result.stderr


def test_bad_listen_exits_2(tmp_path: Path) -> None:
    assert run_cli("--config", write(tmp_path, "listen: nowhere\n")).returncode == 2
    result = run_cli("--listen", "127.0.0.1:99999")
    assert result.returncode == 2 and "--listen" in result.stderr


def test_invalid_yaml_exits_2(tmp_path: Path) -> None:
    result = run_cli("--config", write(tmp_path, "collectors: [\n"))
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_endpoints(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    landing = requests.get(exporter.url + "/", timeout=10)
    assert landing.status_code == 200 and 'href="/metrics"' in landing.text
    assert requests.get(exporter.url + "/-/healthy", timeout=10).status_code == 200
    assert requests.get(exporter.url + "/-/ready", timeout=10).status_code == 200
    assert requests.get(exporter.url + "/nothing-here", timeout=10).status_code == 404
    assert requests.post(exporter.url + "/metrics", timeout=10).status_code == 405
    metrics = requests.get(exporter.url + "/metrics", timeout=10)
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "node_scrape_collector_success" in metrics.text


def test_gzip_only_when_asked(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    raw = requests.get(exporter.url + "/metrics", headers={"Accept-Encoding": "identity"}, stream=True,
                       timeout=10)
    assert "Content-Encoding" not in raw.headers
    assert raw.raw.read().startswith(b"# HELP")
    zipped = requests.get(exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"}, stream=True,
                          timeout=10)
    assert zipped.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(zipped.raw.read())
    assert b"node_scrape_collector_success" in body


def test_disabled_collector_emits_nothing(start_exporter: StartExporter) -> None:
    enabled = start_exporter({"collectors": {"meminfo": {"enabled": True}}}).scrape()
    assert "node_memory_MemTotal_bytes" in names(enabled)
    text = start_exporter({"collectors": {"meminfo": {"enabled": False}}}).scrape()
    assert not any(n.startswith("node_memory_") for n in names(text))
    assert frozenset({("collector", "meminfo")}) not in values(text, "node_scrape_collector_success")
    assert value(text, "node_scrape_collector_success", collector="cpu") == 1


def test_failing_collector_is_marked_and_scrape_answers(start_exporter: StartExporter, tmp_path: Path) -> None:
    # A procfs whose stat file is garbage: the cpu collector raises on parsing, meminfo still works.
    fake_proc = tmp_path / "proc"
    fake_proc.mkdir()
    (fake_proc / "stat").write_text("cpu0 not numbers at all\n")
    for name in ("meminfo", "vmstat"):
        (fake_proc / name).write_text(Path("/proc", name).read_text())
    exporter = start_exporter({"procfs": str(fake_proc), "collectors": {
        name: {"enabled": False} for name in _all_collectors() if name not in ("cpu", "meminfo")}})
    text = exporter.scrape()
    assert value(text, "node_scrape_collector_success", collector="cpu") == 0
    assert value(text, "node_scrape_collector_success", collector="meminfo") == 1
    assert "node_cpu_seconds_total" not in names(text)
    assert value(text, "node_memory_MemTotal_bytes") > 0
    exporter.scrape()  # a second failure of the same kind is not logged again
    log = exporter.service.log()
    assert log.count("collector cpu failed") == 1 and "ValueError" in log


def _all_collectors() -> list[str]:
    from perfwatch.exporter.collectors import load_all

    return list(load_all())


def test_sigterm_exits_cleanly(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    exporter.scrape()
    assert exporter.service.stop(signal.SIGTERM) == 0
    assert "received SIGTERM" in exporter.service.log()
    assert "stopped" in exporter.service.log()


def test_port_in_use_is_a_clear_error(start_exporter: StartExporter) -> None:
    exporter = start_exporter()
    result = run_cli("--listen", f"127.0.0.1:{exporter.port}")
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr


def test_list_collectors_shows_each_with_its_state(tmp_path: Path) -> None:
    result = run_cli("--list-collectors", "--config", write(tmp_path, "collectors:\n  meminfo:\n    enabled: false\n"))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}
    assert set(rows) == set(_all_collectors())
    assert rows["meminfo"] == "disabled" and rows["cpu"] == rows["perf"] == "enabled"
