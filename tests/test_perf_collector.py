"""The perf collector through a fake kernel at the system-call boundary (hardware, cache, multiplexing,
errors, hotplug), plus its config and the release of real perf fds in this process.

The fake receives the packed `struct perf_event_attr` bytes the collector would give the kernel
and answers `read()` with the bytes the kernel would: value, time enabled, time running.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from support.exposition import names, value, values
from support.procs import REPO
from support.prometheus import promtool

from perfwatch.common.config import ConfigError, from_mapping
from perfwatch.exporter import perf_events as pe
from perfwatch.exporter.collectors.base import HostPaths
from perfwatch.exporter.collectors.perf import PerfCollector, PerfOptions
from perfwatch.exporter.exposition import render
from perfwatch.exporter.settings import load_settings

BY_ENCODING = {(e.type, e.config): e.name for e in pe.EVENTS.values()}


class FakeCounter:
    def __init__(self, event: str, cpu: int, config: int) -> None:
        self.event, self.cpu, self.config = event, cpu, config
        self.value = self.enabled = self.running = 0
        self.read_errno: int | None = None
        self.short = False

    def set(self, value: int, enabled: int, running: int) -> None:
        self.value, self.enabled, self.running = value, enabled, running


class FakeKernel:
    """perf_event_open/read/close as the kernel answers them, with values and errors the test picks."""

    def __init__(self, errors: dict[str, int] | None = None, refuse_pmu_bits: bool = False) -> None:
        self.errors = errors or {}
        self.refuse_pmu_bits = refuse_pmu_bits
        self.open: dict[int, FakeCounter] = {}
        self.closed: list[int] = []
        self.read_errors: dict[str, int] = {}  # event → errno for every read of it
        self.calls: list[tuple[str, int, int, int]] = []  # event, cpu, type, full config
        self._next_fd = 1000

    def perf_event_open(self, attr: bytes, pid: int, cpu: int, group_fd: int, flags: int) -> int:
        assert len(attr) == 136
        a = pe.PerfEventAttr.from_buffer_copy(attr)
        assert a.size == 136 and a.read_format == 3 and a.flags == 0 and a.sample_period == 0
        assert (pid, group_fd) == (-1, -1) and flags == pe.PERF_FLAG_FD_CLOEXEC and cpu >= 0
        event = BY_ENCODING[(a.type, a.config & 0xFFFFFFFF)]
        self.calls.append((event, cpu, a.type, a.config))
        if self.refuse_pmu_bits and a.config >> 32:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        err = self.errors.get(event)
        if err:
            raise OSError(err, os.strerror(err))
        fd = self._next_fd
        self._next_fd += 1
        self.open[fd] = FakeCounter(event, cpu, a.config)
        return fd

    def read(self, fd: int, size: int) -> bytes:
        counter = self.open.get(fd)
        if counter is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        err = counter.read_errno or self.read_errors.get(counter.event)
        if err:
            raise OSError(err, os.strerror(err))
        if counter.short:
            return b""
        return struct.pack("=QQQ", counter.value, counter.enabled, counter.running)[:size]

    def close(self, fd: int) -> None:
        del self.open[fd]
        self.closed.append(fd)

    def counter(self, event: str, cpu: int) -> FakeCounter:
        found = [c for c in self.open.values() if (c.event, c.cpu) == (event, cpu)]
        assert len(found) == 1, (event, cpu, found)
        return found[0]


def sysfs(tmp_path: Path, online: str) -> Path:
    root = tmp_path / "sys"
    (root / "devices" / "system" / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "devices" / "system" / "cpu" / "online").write_text(online + "\n")
    return root


def set_online(root: Path, online: str) -> None:
    (root / "devices" / "system" / "cpu" / "online").write_text(online + "\n")


def make(tmp_path: Path, kernel: FakeKernel, online: str = "0-1", **options: object) -> PerfCollector:
    root = sysfs(tmp_path, online)
    return PerfCollector(from_mapping(PerfOptions, options, "collectors.perf"), HostPaths(sysfs=str(root)),
                         kernel=kernel)


def scrape(collector: PerfCollector) -> str:
    return render(collector).decode()


# -- the event table and struct encoding -----------------------------------------------------------

EXPECTED_METRICS = {
    "perfwatch_perf_cpu_cycles_total", "perfwatch_perf_instructions_total",
    "perfwatch_perf_branch_instructions_total", "perfwatch_perf_branch_misses_total",
    "perfwatch_perf_cache_references_total", "perfwatch_perf_cache_misses_total",
    "perfwatch_perf_ref_cycles_total", "perfwatch_perf_stalled_cycles_frontend_total",
    "perfwatch_perf_stalled_cycles_backend_total", "perfwatch_perf_cpu_clock_seconds_total",
    "perfwatch_perf_task_clock_seconds_total", "perfwatch_perf_context_switches_total",
    "perfwatch_perf_cpu_migrations_total", "perfwatch_perf_page_faults_total",
    "perfwatch_perf_minor_faults_total", "perfwatch_perf_major_faults_total",
    *(f"perfwatch_perf_cache_{c}_read_{r}_total" for c in ("l1d", "l1i", "ll", "dtlb", "itlb", "bpu")
      for r in ("accesses", "misses")),
}


def test_attr_struct_layout() -> None:
    assert ctypes.sizeof(pe.PerfEventAttr) == 136
    assert pe.PerfEventAttr.config.offset == 8
    assert pe.PerfEventAttr.read_format.offset == 32
    assert pe.PerfEventAttr.flags.offset == 40
    raw = bytes(pe.make_attr(pe.EVENTS["page-faults"]))
    assert struct.unpack_from("=IIQ", raw) == (pe.PERF_TYPE_SOFTWARE, 136, 2)
    assert struct.unpack_from("=Q", raw, 32) == (3,)  # TOTAL_TIME_ENABLED | TOTAL_TIME_RUNNING
    assert raw[40:] == bytes(96)  # flags and everything after: zero


@pytest.mark.parametrize(("name", "type_", "config"), [
    ("cycles", 0, 0), ("instructions", 0, 1), ("cache-references", 0, 2), ("cache-misses", 0, 3),
    ("branch-instructions", 0, 4), ("branch-misses", 0, 5), ("stalled-cycles-frontend", 0, 7),
    ("stalled-cycles-backend", 0, 8), ("ref-cycles", 0, 9),
    ("cpu-clock", 1, 0), ("task-clock", 1, 1), ("page-faults", 1, 2), ("context-switches", 1, 3),
    ("cpu-migrations", 1, 4), ("minor-faults", 1, 5), ("major-faults", 1, 6),
    # HW_CACHE: cache id | op (read = 0) << 8 | result (access 0, miss 1) << 16
    ("L1-dcache-loads", 3, 0x00000), ("L1-dcache-load-misses", 3, 0x10000),
    ("L1-icache-loads", 3, 0x00001), ("L1-icache-load-misses", 3, 0x10001),
    ("LLC-loads", 3, 0x00002), ("LLC-load-misses", 3, 0x10002),
    ("dTLB-loads", 3, 0x00003), ("dTLB-load-misses", 3, 0x10003),
    ("iTLB-loads", 3, 0x00004), ("iTLB-load-misses", 3, 0x10004),
    ("branch-loads", 3, 0x00005), ("branch-load-misses", 3, 0x10005),
])
def test_event_encoding(name: str, type_: int, config: int) -> None:
    attr = pe.make_attr(pe.EVENTS[name])
    assert (attr.type, attr.config) == (type_, config)


def test_event_table_has_the_agreed_metric_names() -> None:
    assert len(pe.EVENTS) == 28
    assert {f"perfwatch_{e.metric}" for e in pe.EVENTS.values()} == EXPECTED_METRICS


def test_hybrid_pmu_type_goes_in_upper_config_bits() -> None:
    assert pe.make_attr(pe.EVENTS["instructions"], pmu_type=8).config == 8 << 32 | 1
    assert pe.make_attr(pe.EVENTS["LLC-load-misses"], pmu_type=8).config == 8 << 32 | 0x10002
    assert pe.make_attr(pe.EVENTS["page-faults"], pmu_type=8).config == 2  # software: kernel, not a PMU


@pytest.mark.parametrize(("err", "outcome"), [
    (errno.ENOENT, "unsupported"), (errno.EOPNOTSUPP, "unsupported"), (errno.EINVAL, "unsupported"),
    (errno.ENODEV, "unsupported"), (errno.EACCES, "denied"), (errno.EPERM, "denied"),
    (errno.EMFILE, "error"), (errno.EBUSY, "error"),
])
def test_errno_classification(err: int, outcome: str) -> None:
    assert pe.classify(err) == outcome


def test_cpu_lists() -> None:
    assert pe.parse_cpu_list("0-3,8\n") == [0, 1, 2, 3, 8]
    assert pe.parse_cpu_list(" 5 ") == [5]
    assert pe.parse_cpu_list("\n") == []
    for bad in ("0-", "a", "1,,2", "-1", "3-1", "0-3:2"):
        with pytest.raises(ValueError):
            pe.parse_cpu_list(bad)
    assert pe.format_cpu_list({0, 1, 2, 3, 8, 10, 11}) == "0-3,8,10-11"
    assert pe.format_cpu_list(set()) == ""


# -- counting, scaling, status -------------------------------------------------------------------


def test_hardware_cache_and_software_counters(tmp_path: Path) -> None:
    kernel = FakeKernel()
    collector = make(tmp_path, kernel)
    assert len(kernel.open) == 28 * 2
    kernel.counter("instructions", 1).set(3_000_000, 1000, 1000)
    kernel.counter("cycles", 1).set(1_500_000, 1000, 1000)
    kernel.counter("L1-dcache-load-misses", 0).set(4242, 1000, 1000)
    kernel.counter("task-clock", 0).set(2_500_000_000, 1000, 1000)  # ns
    text = scrape(collector)
    assert names(text) >= EXPECTED_METRICS
    assert value(text, "perfwatch_perf_instructions_total", cpu="1") == 3_000_000
    assert value(text, "perfwatch_perf_cpu_cycles_total", cpu="1") == 1_500_000
    assert value(text, "perfwatch_perf_cache_l1d_read_misses_total", cpu="0") == 4242
    assert value(text, "perfwatch_perf_task_clock_seconds_total", cpu="0") == pytest.approx(2.5)
    assert value(text, "perfwatch_perf_instructions_total", cpu="0") == 0
    assert set(values(text, "perfwatch_perf_event_supported").values()) == {1.0}
    assert set(values(text, "perfwatch_perf_event_permission_denied").values()) == {0.0}
    assert len(values(text, "perfwatch_perf_event_running_ratio")) == 56
    assert value(text, "perfwatch_perf_counters_open") == 56
    # promtool reads the full set (hardware counters included) without a complaint.
    result = promtool("check", "metrics", stdin=text)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_multiplex_scaling_of_interval_deltas(tmp_path: Path) -> None:
    kernel = FakeKernel()
    collector = make(tmp_path, kernel, events=["instructions"], cpus="0")
    c = kernel.counter("instructions", 0)

    def total_and_ratio() -> tuple[float, float]:
        text = scrape(collector)
        return (value(text, "perfwatch_perf_instructions_total", cpu="0"),
                value(text, "perfwatch_perf_event_running_ratio", event="instructions", cpu="0"))

    c.set(1000, 100, 50)  # on the PMU half the time: 1000 counted → 2000 estimated
    assert total_and_ratio() == (2000, 0.5)
    c.set(1600, 200, 80)  # Δ 600 over Δrunning 30 of Δenabled 100 → +2000
    total, ratio = total_and_ratio()
    assert total == 4000 and ratio == pytest.approx(0.3)
    c.set(1600, 300, 80)  # never on the PMU this interval: nothing to scale, nothing added
    assert total_and_ratio() == (4000, 0)
    # The next interval that ran extrapolates over the one that did not:
    # Δ 100 over Δrunning 50 of Δenabled 200 (since the last running interval) → +400.
    c.set(1700, 400, 130)
    assert total_and_ratio() == (4400, 0.25)
    c.set(1800, 500, 230)  # counted throughout → exact
    assert total_and_ratio() == (4500, 1.0)


def test_scaling_the_cumulative_value_would_go_down_ours_does_not(tmp_path: Path) -> None:
    kernel = FakeKernel()
    collector = make(tmp_path, kernel, events=["cycles"], cpus="0")
    c = kernel.counter("cycles", 0)
    c.set(1000, 100, 10)
    first = value(scrape(collector), "perfwatch_perf_cpu_cycles_total", cpu="0")
    c.set(1100, 200, 110)
    second = value(scrape(collector), "perfwatch_perf_cpu_cycles_total", cpu="0")
    assert 1100 * 200 / 110 < 1000 * 100 / 10  # what scaling the cumulative value gives: a "reset"
    assert (first, second) == (10000, 10100)  # per-interval scaling: 10000, then +100 counted fully


def test_scaled_totals_never_decrease_and_add_up(tmp_path: Path) -> None:
    rng = random.Random(1234)
    kernel = FakeKernel()
    collector = make(tmp_path, kernel, events=["instructions", "cycles", "LLC-load-misses"], cpus="0-1")
    counters = list(kernel.open.values())
    expected = {(c.event, c.cpu): 0.0 for c in counters}
    baseline = {(c.event, c.cpu): (0, 0, 0) for c in counters}
    previous: dict[tuple[str, str], float] = {}
    metric = {"instructions": "perfwatch_perf_instructions_total", "cycles": "perfwatch_perf_cpu_cycles_total",
              "LLC-load-misses": "perfwatch_perf_cache_ll_read_misses_total"}
    for _ in range(300):
        for c in counters:
            d_enabled = rng.randint(0, 10**9)
            d_running = rng.choice([0, d_enabled, rng.randint(0, d_enabled)])
            d_value = rng.randint(0, 10**6) if d_running else 0
            c.set(c.value + d_value, c.enabled + d_enabled, c.running + d_running)
            v0, e0, r0 = baseline[(c.event, c.cpu)]
            if c.running > r0:  # an interval with no running time carries over to the next
                expected[(c.event, c.cpu)] += (c.value - v0) * (c.enabled - e0) / (c.running - r0)
                baseline[(c.event, c.cpu)] = (c.value, c.enabled, c.running)
        text = scrape(collector)
        for c in counters:
            got = value(text, metric[c.event], cpu=str(c.cpu))
            assert got == pytest.approx(expected[(c.event, c.cpu)], rel=1e-9)
            assert got >= previous.get((c.event, str(c.cpu)), 0.0)
            previous[(c.event, str(c.cpu))] = got


def test_unsupported_and_refused_events_are_reported_not_dropped(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeKernel(errors={
        "cycles": errno.ENOENT, "instructions": errno.EOPNOTSUPP, "LLC-loads": errno.EINVAL,
        "branch-misses": errno.EACCES, "cache-misses": errno.EPERM, "ref-cycles": errno.EMFILE,
    })
    with caplog.at_level(logging.INFO, logger="perfwatch.exporter.collectors.perf"):
        collector = make(tmp_path, kernel)
    text = scrape(collector)
    supported = {dict(k)["event"]: v for k, v in values(text, "perfwatch_perf_event_supported").items()}
    denied = {dict(k)["event"]: v for k, v in values(text, "perfwatch_perf_event_permission_denied").items()}
    assert len(supported) == len(denied) == 28
    for event in ("cycles", "instructions", "LLC-loads", "branch-misses", "cache-misses", "ref-cycles"):
        assert supported[event] == 0, event
    assert {e for e, v in denied.items() if v} == {"branch-misses", "cache-misses"}
    assert supported["page-faults"] == supported["L1-dcache-loads"] == 1
    assert "perfwatch_perf_cpu_cycles_total" not in names(text)
    assert "perfwatch_perf_branch_misses_total" not in names(text)
    assert value(text, "perfwatch_perf_counters_open") == (28 - 6) * 2
    [line] = [r for r in caplog.records if r.name == "perfwatch.exporter.collectors.perf"]
    assert line.levelno == logging.WARNING
    msg = line.getMessage()
    assert "counting 22 of 28 events" in msg
    assert "unsupported by this kernel/CPU" in msg and "cycles, instructions" in msg and "LLC-loads" in msg
    assert "refused for permission" in msg and "cache-misses, branch-misses" in msg
    assert "CAP_PERFMON" in msg and "perf_event_paranoid" in msg
    assert "ref-cycles (EMFILE)" in msg


def test_lost_fd_is_reopened_and_the_total_continues(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kernel = FakeKernel()
    collector = make(tmp_path, kernel, events=["page-faults", "instructions"], cpus="0")
    kernel.counter("page-faults", 0).set(500, 10, 10)
    kernel.counter("instructions", 0).set(7000, 10, 10)
    assert value(scrape(collector), "perfwatch_perf_page_faults_total", cpu="0") == 500
    kernel.counter("page-faults", 0).read_errno = errno.ENODEV
    kernel.counter("instructions", 0).short = True  # a counter in error state reads 0 bytes
    text = scrape(collector)  # the failures neither raise nor lose the totals
    assert value(text, "perfwatch_perf_page_faults_total", cpu="0") == 500
    assert value(text, "perfwatch_perf_instructions_total", cpu="0") == 7000
    assert value(text, "perfwatch_perf_counters_open") == 0
    assert len(kernel.closed) == 2 and not kernel.open
    assert "reading page-faults on CPU 0 failed" in caplog.text
    text = scrape(collector)  # reopened: a fresh counter whose counts add to the old total
    assert value(text, "perfwatch_perf_counters_open") == 2
    kernel.counter("page-faults", 0).set(30, 5, 5)
    kernel.counter("instructions", 0).set(100, 5, 5)
    text = scrape(collector)
    assert value(text, "perfwatch_perf_page_faults_total", cpu="0") == 530
    assert value(text, "perfwatch_perf_instructions_total", cpu="0") == 7100
    kernel.read_errors["page-faults"] = errno.EIO  # every fd of it fails now: logged once, not per scrape
    for _ in range(3):
        text = scrape(collector)
    assert caplog.text.count("reading page-faults on CPU 0 failed") == 2
    assert value(text, "perfwatch_perf_page_faults_total", cpu="0") == 530


def test_cpu_hotplug_through_sysfs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="perfwatch.exporter.collectors.perf")
    kernel = FakeKernel()
    collector = make(tmp_path, kernel, online="0-3", events=["context-switches", "cycles"])
    root = tmp_path / "sys"
    assert {c.cpu for c in kernel.open.values()} == {0, 1, 2, 3}
    kernel.counter("context-switches", 1).set(500, 10, 10)
    assert value(scrape(collector), "perfwatch_perf_context_switches_total", cpu="1") == 500

    set_online(root, "0,2")
    text = scrape(collector)
    assert {c.cpu for c in kernel.open.values()} == {0, 2}
    assert len(kernel.closed) == 4
    assert {dict(k)["cpu"] for k in values(text, "perfwatch_perf_context_switches_total")} == {"0", "2"}
    assert {dict(k)["cpu"] for k in values(text, "perfwatch_perf_event_running_ratio")} == {"0", "2"}
    assert value(text, "perfwatch_perf_counters_open") == 4
    assert "CPUs 1,3 went offline, their counters closed; 4 counters open" in caplog.text

    set_online(root, "0-3")
    scrape(collector)
    assert {c.cpu for c in kernel.open.values()} == {0, 1, 2, 3}
    kernel.counter("context-switches", 1).set(20, 5, 5)  # the new fd starts from zero
    text = scrape(collector)
    assert value(text, "perfwatch_perf_context_switches_total", cpu="1") == 520  # no reset seen by Prometheus
    assert value(text, "perfwatch_perf_counters_open") == 8
    assert "CPUs 1,3 came online, their counters opened; 8 counters open" in caplog.text


def test_offline_cpu_reading_nothing_adds_nothing(tmp_path: Path) -> None:
    # Between going offline and the next sysfs check a CPU's counters stop: times stand still.
    kernel = FakeKernel()
    collector = make(tmp_path, kernel, events=["cpu-clock"], cpus="0")
    kernel.counter("cpu-clock", 0).set(10**9, 10**9, 10**9)
    assert value(scrape(collector), "perfwatch_perf_cpu_clock_seconds_total", cpu="0") == 1.0
    text = scrape(collector)
    assert value(text, "perfwatch_perf_cpu_clock_seconds_total", cpu="0") == 1.0
    assert value(text, "perfwatch_perf_event_running_ratio", event="cpu-clock", cpu="0") == 0


def test_cpus_option_selects_among_online_cpus(tmp_path: Path) -> None:
    kernel = FakeKernel()
    collector = make(tmp_path, kernel, online="0-1", events=["page-faults"], cpus="1,3")
    assert {c.cpu for c in kernel.open.values()} == {1}
    set_online(tmp_path / "sys", "0-3")
    text = scrape(collector)
    assert {c.cpu for c in kernel.open.values()} == {1, 3}
    assert {dict(k)["cpu"] for k in values(text, "perfwatch_perf_page_faults_total")} == {"1", "3"}


def test_close_releases_every_fd(tmp_path: Path) -> None:
    kernel = FakeKernel(errors={"cycles": errno.ENOENT})
    collector = make(tmp_path, kernel, online="0-3")
    opened = len(kernel.open)
    assert opened == 27 * 4
    scrape(collector)
    collector.close()
    assert not kernel.open and len(kernel.closed) == opened
    collector.close()  # twice is harmless
    assert len(kernel.closed) == opened


def test_hybrid_cpus_get_their_pmu_type(tmp_path: Path) -> None:
    root = sysfs(tmp_path, "0-3")
    devices = root / "bus" / "event_source" / "devices"
    for pmu, pmu_type, cpus in (("cpu_core", 4, "0-1"), ("cpu_atom", 10, "2-3")):
        (devices / pmu).mkdir(parents=True)
        (devices / pmu / "type").write_text(f"{pmu_type}\n")
        (devices / pmu / "cpus").write_text(f"{cpus}\n")
    (devices / "software").mkdir()
    (devices / "software" / "type").write_text("1\n")  # no `cpus`: not a core PMU
    assert pe.hybrid_pmu_types(str(devices)) == {0: 4, 1: 4, 2: 10, 3: 10}

    kernel = FakeKernel()
    options = from_mapping(PerfOptions, {"events": ["instructions", "dTLB-load-misses", "page-faults"]})
    PerfCollector(options, HostPaths(sysfs=str(root)), kernel=kernel)
    config = {(event, cpu): cfg for event, cpu, _, cfg in kernel.calls}
    assert config[("instructions", 1)] == 4 << 32 | 1
    assert config[("instructions", 2)] == 10 << 32 | 1
    assert config[("dTLB-load-misses", 3)] == 10 << 32 | 0x10003
    assert config[("page-faults", 3)] == 2

    # A kernel without extended types refuses the PMU bits: the legacy encoding is tried instead.
    old_kernel = FakeKernel(refuse_pmu_bits=True)
    PerfCollector(options, HostPaths(sysfs=str(root)), kernel=old_kernel)
    assert {c.config for c in old_kernel.open.values() if c.event == "instructions"} == {1}
    assert len(old_kernel.open) == 3 * 4


def test_single_core_pmu_is_not_hybrid(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    (devices / "cpu").mkdir(parents=True)
    (devices / "cpu" / "type").write_text("4\n")
    (devices / "cpu" / "cpus").write_text("0-7\n")
    assert pe.hybrid_pmu_types(str(devices)) == {}
    assert pe.hybrid_pmu_types(str(tmp_path / "missing")) == {}


def test_unknown_architecture_reports_every_event_unsupported(tmp_path: Path) -> None:
    kernel = pe.Syscalls(machine="sparc64")
    with pytest.raises(OSError) as err:
        pe.open_counter(kernel, pe.EVENTS["page-faults"], 0)
    assert err.value.errno == errno.ENOSYS
    collector = PerfCollector(from_mapping(PerfOptions, {}), HostPaths(sysfs=str(sysfs(tmp_path, "0"))),
                              kernel=kernel)
    text = scrape(collector)
    assert set(values(text, "perfwatch_perf_event_supported").values()) == {0.0}
    assert value(text, "perfwatch_perf_counters_open") == 0


# -- config ----------------------------------------------------------------------------------------


def write_config(tmp_path: Path, perf: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text("collectors:\n  perf:\n" + perf)
    return path


@pytest.mark.parametrize("cpus", ["0-", "a", "1,,2", "3-1", "''"])
def test_malformed_cpu_list_is_a_config_error(tmp_path: Path, cpus: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, f"    cpus: {cpus}\n"))
    assert err.value.key == "collectors.perf.cpus"


def test_unknown_event_is_a_config_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, "    events: [cycles, instrucions]\n"))
    assert err.value.key == "collectors.perf.events[1]"
    assert "did you mean 'instructions'" in err.value.message
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, "    events: []\n"))
    assert err.value.key == "collectors.perf.events"


def test_event_names_are_case_insensitive_and_deduplicated(tmp_path: Path) -> None:
    _, collectors = load_settings(write_config(tmp_path, "    events: [l1-dcache-load-misses, CYCLES, cycles]\n"
                                                         "    cpus: 0-3,8\n"))
    assert collectors["perf"].enabled  # on by default
    assert collectors["perf"].options.events == ["L1-dcache-load-misses", "cycles"]
    assert collectors["perf"].options.cpus == "0-3,8"


def test_cli_exits_2_naming_the_cpus_key(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "perfwatch.exporter", "--config",
                             str(write_config(tmp_path, "    cpus: 0-x\n"))],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert "collectors.perf.cpus" in result.stderr and "not a CPU list" in result.stderr


# -- the real kernel, in this process --------------------------------------------------------------


def perf_fds(pid: int | str = "self") -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # the fd listdir itself used is gone already
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]"
    return count


def test_close_releases_real_perf_fds() -> None:
    before = perf_fds()
    collector = PerfCollector(from_mapping(PerfOptions, {}), HostPaths())
    text = scrape(collector)
    held = perf_fds() - before
    assert held > 0  # software events open on every machine the tests run on (as root)
    assert value(text, "perfwatch_perf_counters_open") == held
    collector.close()
    assert perf_fds() == before


def test_a_transient_open_error_is_retried_unsupported_and_refused_are_not(tmp_path: Path) -> None:
    kernel = FakeKernel(errors={"page-faults": errno.EMFILE, "cycles": errno.ENOENT, "task-clock": errno.EACCES})
    collector = make(tmp_path, kernel, events=["page-faults", "cycles", "task-clock"], cpus="0")
    supported = {dict(k)["event"]: v for k, v in values(scrape(collector), "perfwatch_perf_event_supported").items()}
    assert supported == {"page-faults": 0, "cycles": 0, "task-clock": 0}
    del kernel.errors["page-faults"]  # the fd table has room again
    del kernel.errors["cycles"], kernel.errors["task-clock"]  # would open now, but are not asked again
    text = scrape(collector)
    assert value(text, "perfwatch_perf_event_supported", event="page-faults") == 1
    kernel.counter("page-faults", 0).set(70, 5, 5)
    assert value(scrape(collector), "perfwatch_perf_page_faults_total", cpu="0") == 70
    opens = [event for event, *_ in kernel.calls]
    assert opens.count("cycles") == opens.count("task-clock") == 1
    assert opens.count("page-faults") == 3  # at start, at the first scrape (EMFILE still), then open
