"""perfwatch-archiver's command line: help, version, and config errors that exit 2 naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.procs import REPO


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfwatch.archiver", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_help_lists_options_and_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for word in ("--config", "--target", "--dsn", "--data-dir", "--scrape-interval", "--listen", "--log-level",
                 "--version", "migrate", "rollup", "retention", "status"):
        assert word in result.stdout, word
    sub = run_cli("status", "--help")
    assert sub.returncode == 0 and "--dsn" in sub.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("perfwatch-archiver 0.")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "archiver.yml"
    path.write_text(text)
    return str(path)


TARGET = "targets:\n  - url: http://127.0.0.1:1/metrics\n"


@pytest.mark.parametrize(("config", "key", "words"), [
    ("targets:\n  - url: http://h:1/metrics\n    scrape_interval: 5s\n    scrape_timeout: 6s\n",
     "targets[0].scrape_timeout", "longer than"),
    ("scrape_interval: 5s\nscrape_timeout: 10s\n" + TARGET, "scrape_timeout", "longer than"),
    ("targets:\n  - url: ftp://h/metrics\n", "targets[0].url", "http"),
    ("targets:\n  - job: x\n", "targets[0].url", "required"),
    ("targets:\n  - url: http://h:1/\n    labels: {job: x}\n", "targets[0].labels.job", "own `job`"),
    ("targets:\n  - url: http://h:1/\n    labels: {'bad-name': x}\n", "targets[0].labels.bad-name", "label name"),
    ("targets:\n  - url: http://h:1/\n  - url: http://h:1/other\n", "targets[1]", "same job and instance"),
    ("targets:\n  - url: http://h:1/\n    scrape_intervall: 5s\n", "targets[0].scrape_intervall",
     "did you mean 'scrape_interval'"),
    (TARGET + "database:\n  dsn: 'host=x port=notaport ='\n", "database.dsn", "not a PostgreSQL connection"),
    (TARGET + "database:\n  dsn: postgresql://h/db\n  dsn_file: /x\n", "database.dsn_file", "not both"),
    (TARGET + "database:\n  dsn_file: /nonexistent/dsn\n", "database.dsn_file", "cannot read"),
    (TARGET + "spool:\n  max_bytes: lots\n", "spool.max_bytes", "not a size"),
    (TARGET + "scrape_interval: 99999999999d\n", "scrape_interval", "longest duration"),
    (TARGET + "sample_limit: -1\n", "sample_limit", "0 (no limit) or more"),
    (TARGET + "body_size_limit: 5 parsecs\n", "body_size_limit", "not a size"),
    ("targets:\n  - url: http://127.0.0.1:1/metrics\n    label_limit: many\n", "targets[0].label_limit", "integer"),
    (TARGET + "schedule:\n  rollup_interval: soon\n", "schedule.rollup_interval", "not a duration"),
    (TARGET + "listen: nowhere\n", "listen", "HOST:PORT"),
    ("targets:\n  - url: https://h:1/\n    tls_config: {ca_file: /nonexistent/ca.pem}\n",
     "targets[0].tls_config.ca_file", "cannot load"),
    ("targets:\n  - url: https://h:1/\n    basic_auth: {username: u, password: p}\n"
     "    authorization: {credentials: t}\n", "targets[0].authorization", "not both"),
    (TARGET + "policy:\n  raw_retentoin: 7d\n", "policy.raw_retentoin", "unknown key"),
    ("targets: [\n", "", "not valid YAML"),
])
def test_config_errors_exit_2_naming_the_key(tmp_path: Path, config: str, key: str, words: str) -> None:
    result = run_cli("--config", write(tmp_path, config))
    assert result.returncode == 2, result.stderr
    assert f"config error: {key}" in result.stderr and words in result.stderr, result.stderr


@pytest.mark.parametrize(("args", "flag"), [
    (["--target", "http://h:1/", "--scrape-interval", "fast"], "--scrape-interval"),
    (["--target", "gopher://h:1/"], "--target"),
    (["--target", "http://h:1/", "--listen", "127.0.0.1:99999"], "--listen"),
    (["--target", "http://h:1/", "--dsn", "host=x port=notaport ="], "--dsn"),
])
def test_bad_command_line_values_exit_2_naming_the_flag(args: list[str], flag: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2 and f"config error: {flag}" in result.stderr, result.stderr


def test_no_target_exits_2() -> None:
    result = run_cli("--dsn", "postgresql://127.0.0.1:1/x")
    assert result.returncode == 2 and "config error: targets" in result.stderr


def test_operator_command_with_database_down_exits_1_and_says_why(tmp_path: Path) -> None:
    result = run_cli("migrate", "--dsn", "postgresql://u:p@127.0.0.1:1/x")
    assert result.returncode == 1
    assert "database" in result.stderr and "127.0.0.1" in result.stderr, result.stderr


def test_status_of_a_database_without_the_archive_says_what_to_do(pg_dsn: str) -> None:
    result = run_cli("status", "--dsn", pg_dsn)
    assert result.returncode == 1 and "no perfwatch archive yet" in result.stderr and "migrate" in result.stderr
    assert "Traceback" not in result.stderr and "[SQL:" not in result.stderr
    migrate = run_cli("migrate", "--dsn", pg_dsn)
    assert migrate.returncode == 0 and "0001_roles.sql" in migrate.stdout and "policy mirrored" in migrate.stdout
    status = run_cli("status", "--dsn", pg_dsn)
    assert status.returncode == 0 and status.stdout.splitlines()[1].split()[:3] == ["raw", "-", "7d"], status.stdout
