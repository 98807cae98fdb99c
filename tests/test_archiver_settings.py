"""The archiver's settings: defaults, derived values, command-line overrides, shipped config files."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.procs import REPO

from perfwatch.archiver.maintenance import partition_tier
from perfwatch.archiver.policy import Policy
from perfwatch.archiver.settings import load_settings, metrics_url
from perfwatch.common.config import ConfigError, Duration


def test_defaults_and_derived_target_values(tmp_path: Path) -> None:
    path = tmp_path / "a.yml"
    path.write_text("scrape_interval: 5s\ntargets:\n"
                    "  - url: http://h:9100\n"
                    "  - url: https://h/x/metrics\n    job: j\n    instance: name\n    scrape_interval: 30s\n"
                    "    labels: {zone: eu}\n")
    settings = load_settings(path)
    first, second = settings.scrape_targets()
    assert (first.url, first.job, first.instance, first.interval, first.timeout) == (
        "http://h:9100/metrics", "perfwatch", "h:9100", 5.0, 5.0)  # timeout: min(10s, interval)
    assert (second.url, second.job, second.instance, second.interval, second.timeout, second.labels) == (
        "https://h/x/metrics", "j", "name", 30.0, 10.0, (("zone", "eu"),))
    assert settings.listen == ":10281" and settings.data_dir == "data"
    assert settings.database.resolve_dsn() is None  # the embedded server
    assert [t.name for t in settings.policy.tiers] == ["5m", "1h"]


def test_command_line_replaces_targets_and_sets_dsn(tmp_path: Path) -> None:
    path = tmp_path / "a.yml"
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://u:p@db/perfwatch\n")
    path.write_text(f"targets:\n  - url: http://old:1/\ndatabase:\n  dsn_file: {secret}\n")
    assert load_settings(path).database.resolve_dsn() == "postgresql://u:p@db/perfwatch"
    settings = load_settings(path, {"targets": ["http://a:1/", "http://b:2/m"], "scrape_interval": "500ms",
                                    "database.dsn": "postgresql://x/y", "data_dir": str(tmp_path)})
    assert [t.url for t in settings.scrape_targets()] == ["http://a:1/metrics", "http://b:2/m"]
    assert settings.scrape_targets()[0].interval == 0.5
    assert settings.database.resolve_dsn() == "postgresql://x/y"


def test_dsn_file_with_a_bad_dsn_names_the_key(tmp_path: Path) -> None:
    secret = tmp_path / "dsn"
    secret.write_text("host=a b\n")
    path = tmp_path / "a.yml"
    path.write_text(f"database:\n  dsn_file: {secret}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path).database.resolve_dsn()
    assert err.value.key == "database.dsn_file"


def test_the_compose_config_is_valid() -> None:
    settings = load_settings(REPO / "provisioning" / "perfwatch" / "archiver.yml")
    assert settings.scrape_targets() == []  # Prometheus remote-writes instead
    assert settings.receive.remote_write and settings.receive.remote_read
    assert settings.database.dsn_file == "/run/secrets/archiver_dsn"


def test_metrics_url_keeps_explicit_paths() -> None:
    assert metrics_url("http://h:1") == "http://h:1/metrics"
    assert metrics_url("http://h:1/?x=1") == "http://h:1/metrics?x=1"
    assert metrics_url("http://h:1/federate?match[]=up") == "http://h:1/federate?match[]=up"


def test_partition_tables_map_to_their_tier() -> None:
    policy = Policy()
    assert partition_tier("sample_20250101", policy) == "raw"
    assert partition_tier("rollup_5m_20250101", policy) == "5m"
    assert partition_tier("rollup_1h_20250101_120000", policy) == "1h"
    assert partition_tier("elsewhere", policy) == "unknown"


def test_remote_doors_are_closed_until_the_config_or_the_command_line_opens_them(tmp_path: Path) -> None:
    path = tmp_path / "a.yml"
    path.write_text("receive:\n  remote_read: true\n  body_size_limit: 4MiB\n  remote_read_sample_limit: 0\n")
    assert not load_settings(None).receive.remote_write and not load_settings(None).receive.remote_read
    settings = load_settings(path, {"receive.remote_write": True})
    assert settings.receive.remote_write and settings.receive.remote_read and settings.has_sources()
    assert settings.receive.body_size_limit == 4 << 20 and settings.receive.remote_read_sample_limit == 0
    assert not load_settings(None).has_sources()  # no targets and no door: nothing to do


@pytest.mark.parametrize(("text", "key"), [
    ("receive:\n  remote_write: maybe\n", "receive.remote_write"),
    ("receive:\n  remote_wirte: true\n", "receive.remote_wirte"),
    ("receive:\n  body_size_limit: 100\n", "receive.body_size_limit"),
    ("receive:\n  remote_read_sample_limit: -1\n", "receive.remote_read_sample_limit"),
    ("receive:\n  remote_read_concurrent_limit: 0\n", "receive.remote_read_concurrent_limit"),
])
def test_a_bad_receive_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "a.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == key, err.value


def test_rightsizing_thresholds_default_and_come_from_the_config(tmp_path: Path) -> None:
    assert load_settings(None).rightsizing.thresholds() == {
        "cpu_under": 0.2, "memory_under": 0.3, "cpu_over": 0.8, "memory_over": 0.9, "disk_over": 0.8,
        "network_over": 0.8, "min_coverage": 0.5}
    assert load_settings(None).schedule.summary_interval == Duration(300)
    path = tmp_path / "a.yml"
    path.write_text("rightsizing:\n  cpu_over: 0.95\n  min_coverage: 1\nschedule:\n  summary_interval: 1m\n")
    settings = load_settings(path)
    assert (settings.rightsizing.cpu_over, settings.rightsizing.min_coverage) == (0.95, 1.0)
    assert settings.rightsizing.cpu_under == 0.2
    assert settings.schedule.summary_interval == Duration(60)


@pytest.mark.parametrize(("text", "key", "message"), [
    ("rightsizing:\n  cpu_over: 1.5\n", "rightsizing.cpu_over", "must be a ratio above 0 and at most 1, not 1.5"),
    ("rightsizing:\n  disk_over: 0\n", "rightsizing.disk_over", "must be a ratio above 0 and at most 1, not 0.0"),
    ("rightsizing:\n  network_over: high\n", "rightsizing.network_over", "must be a number, not 'high'"),
    ("rightsizing:\n  memory_under: 0.95\n", "rightsizing.memory_under", "0.95 must be below memory_over (0.9)"),
    ("rightsizing:\n  cpu_ovre: 0.9\n", "rightsizing.cpu_ovre", "did you mean 'cpu_over'?"),
    ("schedule:\n  summary_interval: often\n", "schedule.summary_interval", ""),
])
def test_a_bad_rightsizing_key_is_named(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = tmp_path / "a.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == key, err.value
    assert message in err.value.message
