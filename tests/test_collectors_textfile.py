"""The textfile collector against node_exporter 1.5's on the same directories of .prom files: good,
malformed, conflicting, timestamped, unreadable (permission denied) — the same families, HELP,
TYPE, series and values, node_textfile_mtime_seconds and node_textfile_scrape_error. Then what
perfwatch does where node_exporter cannot be run on the case: a FIFO (node_exporter blocks on it
for ever), a file over the size limit, a label name starting with `__` (node_exporter 1.5 panics),
a conflict with another collector's metric, and the flag and config key through a real exporter.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.exposition import value, values
from support.node_exporter import scrape_once
from test_perf_kernel import ensure_unprivileged_user

from perfwatch.common.families import GaugeMetricFamily
from perfwatch.exporter.collect import CollectorSet
from perfwatch.exporter.collectors import textfile
from perfwatch.exporter.collectors.base import HostPaths, NoOptions
from perfwatch.exporter.collectors.loadavg import LoadavgCollector
from perfwatch.exporter.collectors.textfile import TextfileCollector, TextfileOptions, go_float
from perfwatch.exporter.exposition import render_families

if TYPE_CHECKING:
    from conftest import StartExporter


CASES: dict[str, dict[str, str]] = {
    "good": {"a.prom": "# HELP m_total Some counter.\n# TYPE m_total counter\nm_total{x=\"1\"} 3\nm_total{x=\"2\"} 4\n"
                       "# TYPE c counter\nc 5\ng{a=\"1\"} 1\ng{b=\"2\"} 2\n",
             "b.prom": "h 1e9\n", "notes.txt": "ignored 1\n", "b.prom.bak": "ignored 1\n"},
    "malformed": {"a.prom": "ok 1\n", "b.prom": "bad{ 1\n", "c.prom": "no_newline_at_end 1",
                  "d.prom": "m{l=\"\\t\"} 1\n", "e.prom": "m{a=\"1\",a=\"2\"} 1\n", "f.prom": "hex 0x10\n",
                  "g.prom": "trailing_blank 1 \n", "h.prom": "m 1\n# TYPE m gauge\n"},
    "help_conflict": {"a.prom": "# HELP m A\nm{f=\"a\"} 1\n", "b.prom": "# HELP m B\nm{f=\"b\"} 2\n"},
    "type_conflict": {"a.prom": "# TYPE m gauge\nm{f=\"a\"} 1\n", "b.prom": "# TYPE m counter\nm{f=\"b\"} 2\n"},
    "no_help_two_files": {"a.prom": "m{f=\"a\"} 1\n", "b.prom": "m{f=\"b\"} 2\n"},
    "same_series_two_files": {"a.prom": "m 1\n", "b.prom": "m 2\n"},
    "same_series_one_file": {"a.prom": "m 1\nm 2\n"},
    "timestamps": {"a.prom": "m 1 1000\n", "b.prom": "n 1\n"},
    "summary_histogram": {"a.prom": "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns{quantile=\"0.99\"} 2\ns_sum 10\n"
                                    "s_count 3\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"1\"} 2\n"
                                    "h_bucket{le=\"1e6\"} 3\nh_sum 1.5\nh_count 4\n"},
    "suffix_clash": {"a.prom": "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n",
                     "b.prom": "s_count{x=\"y\"} 5\n"},
    "scrape_error_in_a_file": {"a.prom": "# HELP node_textfile_scrape_error mine\nnode_textfile_scrape_error 7\n"},
    "escapes_and_values": {"a.prom": "# HELP m a\\\\b\\nc\nm{l=\"q\\\"x\\\\y\\nz\"} 1\nm{l=\"\"} 2\n"
                                     "# TYPE c COUNTER\nc +Inf\nd NaN\ne -1.5e-7\ng 1e3\nh .5\ni 5.\nj inf\n"
                                     "k -Infinity\n"},
    "lenient_syntax": {"a.prom": "m{a=\"1\",} 1\nn { a = \"2\" } 2\n# TYPE t\nt 1\n# a comment\n#TYPE u gauge\n"
                                 "u 1\nv 1\n# HELP v late help\n", "empty.prom": ""},
}


def normalized(text: str, prefixes: tuple[str, ...] = ("node_textfile_",)) -> list[tuple[Any, ...]]:
    """Families that are no exporter self-metrics: name, type, help, and samples with values."""
    out = []
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("go_", "process_", "promhttp_", "node_scrape_", "node_exporter_", "perfwatch_",
                                    "python_")):
            continue
        if family.name.startswith("node_") and not family.name.startswith(prefixes):
            continue
        samples = sorted((s.name, tuple(sorted(s.labels.items())), repr(float(s.value))) for s in family.samples)
        out.append((family.name, family.type, family.documentation, samples))
    return sorted(out)


def node_exporter_scrape(directory: Path, user: str | None = None) -> str:
    return scrape_once(["--collector.disable-defaults", "--collector.textfile",
                        f"--collector.textfile.directory={directory}"], user)


def perfwatch_scrape(directory: Path | str | None) -> str:
    options = TextfileOptions(directory=None if directory is None else str(directory))
    return render_families(TextfileCollector(options, HostPaths()).collect()).decode()


def make(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_output_as_node_exporter(case: str, tmp_path: Path) -> None:
    directory = make(tmp_path / case, CASES[case])
    theirs, ours = node_exporter_scrape(directory), perfwatch_scrape(directory)
    assert normalized(ours) == normalized(theirs)


def test_expected_values_of_the_cases(tmp_path: Path) -> None:
    """What the comparison above agrees on, spelled out for the main rules."""
    good = perfwatch_scrape(make(tmp_path / "good", CASES["good"]))
    assert "# TYPE c counter\nc 5.0\n" in good  # a counter keeps its name: no _total added
    assert values(good, "g") == {frozenset({("a", "1"), ("b", "")}): 1, frozenset({("a", ""), ("b", "2")}): 2}
    assert value(good, "node_textfile_scrape_error") == 0
    mtime = (tmp_path / "good" / "a.prom").stat().st_mtime_ns // 10**9
    assert values(good, "node_textfile_mtime_seconds") == {
        frozenset({("file", str(tmp_path / "good" / "a.prom"))}): mtime,
        frozenset({("file", str(tmp_path / "good" / "b.prom"))}): mtime}
    assert f"# HELP h Metric read from {tmp_path / 'good' / 'b.prom'}\n" in good

    bad = perfwatch_scrape(make(tmp_path / "malformed", CASES["malformed"]))
    assert value(bad, "node_textfile_scrape_error") == 1
    assert value(bad, "ok") == 1
    read = {frozenset({("file", str(tmp_path / "malformed/a.prom"))})}
    assert set(values(bad, "node_textfile_mtime_seconds")) == read

    conflict = perfwatch_scrape(make(tmp_path / "help", CASES["help_conflict"]))
    assert values(conflict, "m") == {frozenset({("f", "a")}): 1}  # the first file's stays
    assert value(conflict, "node_textfile_scrape_error") == 0  # as node_exporter: a gather error, not a file's
    stamped = perfwatch_scrape(make(tmp_path / "ts", CASES["timestamps"]))
    assert "m" not in {f.name for f in text_string_to_metric_families(stamped)}
    assert value(stamped, "n") == 1 and value(stamped, "node_textfile_scrape_error") == 1
    hist = perfwatch_scrape(make(tmp_path / "hist", CASES["summary_histogram"]))
    assert 'h_bucket{le="1e+06"} 3.0\nh_bucket{le="+Inf"} 4.0\n' in hist


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can list (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="pw-textfile-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def unreadable_setup(directory: Path) -> str | None:
    make(directory, {"a.prom": "a 1\n", "denied.prom": "b 1\n"})
    (directory / "sub.prom").mkdir()  # a directory named .prom: an empty file to node_exporter
    for path in directory.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)
    (directory / "denied.prom").chmod(0)
    return ensure_unprivileged_user()  # root reads mode 000: run both as a user that cannot


def test_permission_denied_like_node_exporter(shared_dir: Path, start_exporter: StartExporter) -> None:
    user = unreadable_setup(shared_dir)
    theirs = node_exporter_scrape(shared_dir, user=user)
    # (the flag: a config file in the private tmp_path would be unreadable to the user)
    ours = start_exporter(None, "--collector.textfile.directory", str(shared_dir), user=user).scrape()
    assert normalized(ours) == normalized(theirs)
    assert value(ours, "node_textfile_scrape_error") == 1
    assert value(ours, "a") == 1
    assert {dict(k)["file"] for k in values(ours, "node_textfile_mtime_seconds")} == {
        str(shared_dir / "a.prom"), str(shared_dir / "sub.prom")}
    assert value(ours, "node_scrape_collector_success", collector="textfile") == 1


def test_fifo_is_an_error_and_does_not_block(tmp_path: Path) -> None:
    directory = make(tmp_path / "d", {"a.prom": "a 1\n"})
    os.mkfifo(directory / "pipe.prom")  # node_exporter 1.5 opens it and waits for a writer for ever
    start = time.monotonic()
    text = perfwatch_scrape(directory)
    assert time.monotonic() - start < 2
    assert value(text, "node_textfile_scrape_error") == 1 and value(text, "a") == 1
    assert len(values(text, "node_textfile_mtime_seconds")) == 1


def test_file_over_the_size_limit_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(textfile, "MAX_FILE_BYTES", 1000)
    directory = make(tmp_path / "d", {"big.prom": "".join(f"m{{i=\"{i}\"}} 1\n" for i in range(200)),
                                      "small.prom": "s 1\n"})
    text = perfwatch_scrape(directory)
    assert value(text, "node_textfile_scrape_error") == 1 and value(text, "s") == 1
    assert "m" not in {f.name for f in text_string_to_metric_families(text)}
    assert textfile.MAX_FILE_BYTES == 1000 and (directory / "big.prom").stat().st_size > 1000


def test_reserved_label_name_is_a_malformed_file(tmp_path: Path) -> None:
    # node_exporter 1.5 panics and exits on `__x` (client_golang refuses the label in MustNewConstMetric)
    text = perfwatch_scrape(make(tmp_path / "d", {"a.prom": "m{__x=\"1\"} 1\n", "b.prom": "b 1\n"}))
    assert value(text, "node_textfile_scrape_error") == 1 and value(text, "b") == 1


def test_no_directory_missing_directory_and_glob(tmp_path: Path) -> None:
    assert normalized(perfwatch_scrape(None)) == [
        ("node_textfile_scrape_error", "gauge", "1 if there was an error opening or reading a file, 0 otherwise",
         [("node_textfile_scrape_error", (), "0.0")])]  # node_exporter 1.5 without the flag: the same
    assert value(perfwatch_scrape(tmp_path / "missing"), "node_textfile_scrape_error") == 1
    make(tmp_path / "one", {"a.prom": "a 1\n"})
    make(tmp_path / "two", {"b.prom": "b 2\n"})
    text = perfwatch_scrape(f"{tmp_path}/*")
    assert value(text, "a") == 1 and value(text, "b") == 2 and value(text, "node_textfile_scrape_error") == 0


def test_conflict_with_another_collectors_metric_drops_the_files(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    directory = make(tmp_path / "d", {"a.prom": "# HELP node_network_up other help\nnode_network_up 1\n"
                                                "node_load1 7\n# TYPE node_arp_entries gauge\n"
                                                "node_arp_entries{device=\"eth9\"} 3\n"
                                                "node_arp_entries{device=\"eth0\"} 5\n"})
    collector = TextfileCollector(TextfileOptions(directory=str(directory)), HostPaths())
    up = GaugeMetricFamily("node_network_up", "Value is 1 if operstate is 'up', 0 otherwise.", labels=["device"])
    up.add_metric(["eth0"], 1)
    load = GaugeMetricFamily("node_load1", "1m load average.", value=0.5)
    arp = GaugeMetricFamily("node_arp_entries", "Metric read from " + str(directory / "a.prom"), labels=["device"])
    arp.add_metric(["eth0"], 1)
    collector.expose_after([up, load, arp])
    with caplog.at_level(logging.WARNING):
        text = render_families(collector.collect()).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "node_network_up" not in names and "node_load1" not in names  # other HELP; another series
    assert values(text, "node_arp_entries") == {frozenset({("device", "eth9")}): 3}  # eth0 is exposed already
    assert value(text, "node_textfile_scrape_error") == 0
    assert "node_network_up has help" in caplog.text


def test_in_a_scrape_the_textfile_collector_runs_last_and_the_exporters_own_metric_stays(tmp_path: Path) -> None:
    directory = make(tmp_path / "d", {"a.prom": "node_load1 7\nsite_backup_age_seconds 60\n"})
    collectors = CollectorSet([TextfileCollector(TextfileOptions(directory=str(directory)), HostPaths()),
                               LoadavgCollector(NoOptions(), HostPaths())])
    text = render_families(collectors.collect()).decode()
    assert value(text, "site_backup_age_seconds") == 60
    assert 0 <= value(text, "node_load1") != 7  # loadavg's, though textfile comes first in the list
    assert text.count("\nnode_load1 ") == 1
    collectors.close()


def test_go_float_formats_like_strconv() -> None:
    cases = {1.0: "1", 0.5: "0.5", 1e6: "1e+06", 123456.0: "123456", 1234567.0: "1.234567e+06", 1e-5: "1e-05",
             0.0001: "0.0001", -2.5e-7: "-2.5e-07", 100.0: "100", float("inf"): "+Inf", 0.0: "0", 12.5: "12.5"}
    assert {v: go_float(v) for v in cases} == cases


def test_flag_and_config_key_through_the_exporter(start_exporter: StartExporter, tmp_path: Path) -> None:
    flag_dir = make(tmp_path / "flag", {"x.prom": "from_flag 1\n"})
    config_dir = make(tmp_path / "config", {"y.prom": "from_config 2\n"})
    exporter = start_exporter({"collectors": {"textfile": {"directory": str(config_dir)}}},
                              "--collector.textfile.directory", str(flag_dir))
    text = exporter.scrape()
    assert value(text, "from_flag") == 1 and "from_config" not in text  # the flag wins
    assert value(text, "node_scrape_collector_success", collector="textfile") == 1
    text = start_exporter({"collectors": {"textfile": {"directory": str(config_dir)}}}).scrape()
    assert value(text, "from_config") == 2 and value(text, "node_textfile_scrape_error") == 0
    assert stat.S_ISDIR(config_dir.stat().st_mode)
