"""perfwatch as a drop-in for node_exporter: the same series, names, labels, types and values.

Debian's node_exporter (`prometheus-node-exporter`, 1.5 on the test machines; scripts/test
installs it) runs with exactly the collectors that perfwatch's enabled collectors stand for
(each collector class's `node_collectors`), beside a real perfwatch-exporter. The scrapes go
node_exporter, perfwatch, node_exporter, so that each of perfwatch's values can be held
against the two readings around it: counters must lie between them, sizes and totals must be
equal, and what moves on its own (load, free memory, process counts, the clock) must be near.

For every series name node_exporter exposes from those collectors, perfwatch must expose the
same name with the same label keys and type, and every series (label set) node_exporter has,
except where EXCEPTIONS says why not.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from support.procs import Service, free_port

from perfwatch.exporter.collectors import load_all

if TYPE_CHECKING:
    from conftest import StartExporter

pytestmark = pytest.mark.slow

BINARY = "prometheus-node-exporter"

# node_exporter flags a perfwatch collector needs beyond `--collector.NAME` to expose what it does.
EXTRA_FLAGS = {
    "softirqs": ["--collector.stat.softirq"],  # node_softirqs_total{vector} is behind this flag
    # node_cpu_info and the first CPU's flags and bugs (off by default in both).
    "cpu": ["--collector.cpu.info", "--collector.cpu.info.flags-include=.*", "--collector.cpu.info.bugs-include=.*"],
}
# perfwatch's options for the same.
EXTRA_OPTIONS = {"cpu": {"info": True, "info_flags_include": ".*", "info_bugs_include": ".*"}}

# Not from a collector: node_exporter's own build info and Go runtime, the HTTP handler's metrics.
NOT_FROM_COLLECTORS = ("go_", "process_", "promhttp_", "node_exporter_build_info")

# Series names compared in name, label keys and type only, with the reason.
EXCEPTIONS = {
    # The `collector` label names the perfwatch collector (meminfo, softirqs, ...), not always
    # node_exporter's (softirqs is part of node_exporter's stat); durations differ by nature.
    "node_scrape_collector_success": "collector names are perfwatch's",
    "node_scrape_collector_duration_seconds": "collector names are perfwatch's; durations differ",
}

MiB = 1 << 20

# Gauges that are sizes, limits or identities: equal, to the last digit.
EXACT = {
    "node_memory_MemTotal_bytes", "node_memory_SwapTotal_bytes", "node_memory_Hugepagesize_bytes",
    "node_memory_HugePages_Total", "node_memory_VmallocTotal_bytes", "node_memory_CommitLimit_bytes",
    "node_memory_DirectMap4k_bytes", "node_memory_DirectMap2M_bytes", "node_memory_DirectMap1G_bytes",
    "node_memory_Balloon_bytes", "node_memory_Bounce_bytes", "node_memory_NFS_Unstable_bytes",
    "node_filefd_maximum", "node_processes_max_processes", "node_processes_max_threads",
    "node_filesystem_size_bytes", "node_filesystem_files", "node_filesystem_readonly",
    "node_filesystem_device_error", "node_boot_time_seconds", "node_os_version", "node_os_info",
    "node_uname_info", "node_disk_info", "node_disk_filesystem_info", "node_disk_device_mapper_info",
    "node_time_zone_offset_seconds", "node_time_clocksource_available_info",
    "node_time_clocksource_current_info", "node_cpu_frequency_max_hertz", "node_cpu_frequency_min_hertz",
    "node_cpu_scaling_frequency_max_hertz", "node_cpu_scaling_frequency_min_hertz", "node_cpu_scaling_governor",
    "node_hwmon_chip_names", "node_hwmon_sensor_label",
    "node_cpu_info", "node_cpu_flag_info", "node_cpu_bug_info", "node_disk_ata_rotation_rate_rpm",
    "node_disk_ata_write_cache", "node_disk_ata_write_cache_enabled",
}


@dataclass(frozen=True)
class Near:
    """A gauge that moves on its own: within the two node_exporter readings, widened by
    `relative` of the larger and by `absolute`."""

    relative: float = 0.0
    absolute: float = 0.0

    def holds(self, got: float, before: float, after: float) -> bool:
        low, high = min(before, after), max(before, after)
        slack = self.relative * max(abs(low), abs(high)) + self.absolute
        return low - slack <= got <= high + slack


# What moves on its own, by name prefix (the longest prefix wins). Everything else must lie
# between the two node_exporter readings (a counter, or a gauge that did not move), give or take
# float rounding, or, in EXACT, equal them.
MOVING: dict[str, Near] = {
    "node_load": Near(0.25, 0.5),  # 1-minute load jumps with a burst of the tests running beside
    "node_time_seconds": Near(0, 5.0),  # seconds apart at most
    "node_procs_": Near(0, 16),  # runnable/blocked right now: the scrapes themselves run
    "node_processes_": Near(0.1, 20),  # processes and threads come and go (other tests run)
    "node_filefd_allocated": Near(0.1, 200),
    "node_memory_": Near(0.05, 64 * MiB),  # free, cached, dirty, ... move with every allocation
    "node_filesystem_": Near(0.01, 256 * MiB),  # free, avail, files_free: other tests write files
    "node_disk_io_now": Near(0, 64),
    "node_cpu_frequency_hertz": Near(0.5),
    "node_cpu_scaling_frequency_hertz": Near(0.5),
    "node_hwmon_": Near(0.2, 5),  # temperatures, fan speeds, voltages, power
    "node_netstat_Tcp_CurrEstab": Near(0.2, 20),  # an untyped gauge among netstat's counters
    "node_sockstat_": Near(0.1, 50),  # sockets in use, TIME_WAIT, memory: other tests connect
    "node_tcp_connection_states": Near(0.1, 50),
    "node_nf_conntrack_entries": Near(0.1, 50),
    "node_arp_entries": Near(0, 5),
    "node_entropy_available_bits": Near(0.5, 256),
    "node_timex_": Near(0.1, 0.01),  # offset, frequency and errors drift between the readings
    "node_thermal_zone_temp": Near(0.2, 5),
}
# Series that count things which may be absent at one reading: a missing series reads as 0
# (perfwatch always reports the common process states; node_exporter only those it saw).
ZERO_WHEN_ABSENT = ("node_processes_state", "node_processes_threads_state")


@dataclass
class Family:
    type: str
    series: dict[frozenset[tuple[str, str]], float]


def parse(text: str) -> dict[str, Family]:
    """Sample name → its family's type and its series. Counters are keyed by their sample name
    (`…_total`), the name queries use."""
    out: dict[str, Family] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            entry = out.setdefault(sample.name, Family(family.type, {}))
            entry.series[frozenset(sample.labels.items())] = sample.value
    return out


def node_collector_flags() -> tuple[dict[str, Any], list[str]]:
    """perfwatch's config (every default collector that stands for node_exporter collectors, on)
    and node_exporter's flags for exactly those collectors."""
    config: dict[str, Any] = {}
    flags = ["--collector.disable-defaults"]
    names: set[str] = set()
    for name, cls in sorted(load_all().items()):
        enabled = cls.default_enabled and bool(cls.node_collectors)
        config[name] = {"enabled": enabled, **(EXTRA_OPTIONS.get(name, {}) if enabled else {})}
        if enabled:
            names.update(cls.node_collectors)
            flags += EXTRA_FLAGS.get(name, [])
    flags += [f"--collector.{n}" for n in sorted(names)]
    return {"collectors": config}, flags


def scrape(url: str) -> dict[str, Family]:
    r = requests.get(url, timeout=30)
    assert r.status_code == 200, r.text
    return parse(r.text)


def check_value(name: str, kind: str, got: float, before: float, after: float) -> str | None:
    """None if perfwatch's `got` agrees with node_exporter's `before` and `after`, else why not."""
    if math.isnan(got) or math.isnan(before):
        return None if math.isnan(got) and math.isnan(before) else "NaN on one side"
    if name in EXACT:
        return None if got == before == after or got in (before, after) else f"{got} != {before} / {after}"
    rules = [(prefix, near) for prefix, near in MOVING.items() if name.startswith(prefix)]
    if rules:
        _, near = max(rules, key=lambda rule: len(rule[0]))
        return None if near.holds(got, before, after) else f"{got} not near [{before}, {after}] ({near})"
    # Read between the two: [before, after], give or take float rounding (ms → s, µs → s).
    slack = 1e-9 * max(abs(before), abs(after), 1.0)
    ok = min(before, after) - slack <= got <= max(before, after) + slack
    return None if ok else f"{kind} {got} not within [{before}, {after}]"


def test_node_exporter_is_installed() -> None:
    assert shutil.which(BINARY), f"{BINARY} is not installed (scripts/test installs it: apt-get install {BINARY})"
    version = subprocess.run([BINARY, "--version"], capture_output=True, text=True, check=True)
    assert "node_exporter, version" in version.stdout + version.stderr


def test_same_series_names_labels_types_and_values(start_exporter: StartExporter, tmp_path: Path) -> None:
    assert shutil.which(BINARY), f"{BINARY} is not installed (scripts/test installs it)"
    config, flags = node_collector_flags()
    port = free_port()
    node = Service([BINARY, f"--web.listen-address=127.0.0.1:{port}", *flags], tmp_path / "node_exporter.log",
                   ready_url=f"http://127.0.0.1:{port}/metrics")
    node.start()
    try:
        perfwatch = start_exporter(config)
        node_url, perfwatch_url = f"http://127.0.0.1:{port}/metrics", f"{perfwatch.url}/metrics"
        scrape(perfwatch_url)  # a first scrape: what perfwatch reads once (limits, os-release) is read
        before = scrape(node_url)
        ours = scrape(perfwatch_url)
        after = scrape(node_url)
    finally:
        node.stop()

    problems: list[str] = []
    compared = 0
    for name, theirs in sorted(before.items()):
        if name.startswith(NOT_FROM_COLLECTORS):
            continue
        mine = ours.get(name)
        if mine is None:
            problems.append(f"{name}: missing")
            continue
        if mine.type != theirs.type:
            problems.append(f"{name}: type {mine.type}, node_exporter's {theirs.type}")
        their_keys = {frozenset(k for k, _ in labels) for labels in theirs.series}
        my_keys = {frozenset(k for k, _ in labels) for labels in mine.series}
        if my_keys != their_keys:
            problems.append(f"{name}: label keys {sorted(map(sorted, my_keys))}, "
                            f"node_exporter's {sorted(map(sorted, their_keys))}")
            continue
        if name in EXCEPTIONS:
            continue
        later = after.get(name, Family(theirs.type, {})).series
        zero = name in ZERO_WHEN_ABSENT
        labelsets = set(theirs.series) | (set(mine.series) if zero else set())
        for labels in sorted(labelsets, key=sorted):
            got = mine.series.get(labels, 0.0 if zero else None)
            if got is None:
                problems.append(f"{name}{dict(labels)}: missing")
                continue
            first = theirs.series.get(labels, 0.0)
            second = later.get(labels, first if not zero else 0.0)
            why = check_value(name, theirs.type, got, first, second)
            compared += 1
            if why:
                problems.append(f"{name}{dict(labels)}: {why}")
    assert not problems, "\n".join(problems)
    assert compared > 100, compared  # a whole host's worth, not an empty scrape


@pytest.mark.parametrize(("got", "before", "after", "ok"), [
    (5.0, 4.0, 6.0, True), (7.0, 4.0, 6.0, False), (3.0, 4.0, 6.0, False), (4.0, 4.0, 4.0, True),
])
def test_counters_are_bracketed(got: float, before: float, after: float, ok: bool) -> None:
    assert (check_value("node_x_total", "counter", got, before, after) is None) is ok


def test_exact_and_moving_rules() -> None:
    check: Callable[..., str | None] = check_value
    assert check("node_sockstat_sockets_used", "gauge", 88.0, 87.0, 89.0) is None  # between the readings
    assert check("node_netstat_Tcp_CurrEstab", "unknown", 1.0, 100.0, 100.0)  # an untyped gauge: near, not between
    assert check("node_memory_MemTotal_bytes", "gauge", 1.0, 1.0, 1.0) is None
    assert check("node_memory_MemTotal_bytes", "gauge", 2.0, 1.0, 1.0)
    assert check("node_memory_MemFree_bytes", "gauge", 1000.0 * MiB, 1010.0 * MiB, 1020.0 * MiB) is None
    assert check("node_memory_MemFree_bytes", "gauge", 500.0 * MiB, 1010.0 * MiB, 1020.0 * MiB)
    assert check("node_load1", "gauge", 0.6, 0.3, 0.3) is None
    assert check("node_load1", "gauge", 3.0, 0.3, 0.3)
