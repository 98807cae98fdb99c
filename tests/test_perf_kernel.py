"""The perf collector against the real kernel, in a real exporter process.

Software events count on every Linux machine; hardware and cache events count only where the
kernel exposes a PMU (not on a VM without a virtual PMU), and must then be reported unsupported.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from support.exposition import value, values
from support.procs import REPO
from test_perf_collector import perf_fds

from perfwatch.archiver.embedded import _make_traversable
from perfwatch.exporter import perf_events as pe

if TYPE_CHECKING:
    from conftest import StartExporter

UNPRIVILEGED_USER = "perfwatch-test"
PAGE = os.sysconf("SC_PAGE_SIZE")


def last_online_cpu() -> int:
    return pe.parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())[-1]


def run_pinned(cpu: int, body: str) -> None:
    """Run `body` in a child Python process bound to `cpu` for all of its work."""
    code = f"import os, mmap, time\nos.sched_setaffinity(0, {{{cpu}}})\n{body}"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def missing_pmu() -> str | None:
    """Why this kernel counts no hardware events (None: it does): open `instructions` for this process."""
    try:
        fd = pe.open_counter(pe.Syscalls(), pe.EVENTS["instructions"], cpu=-1, pid=0)
    except OSError as err:
        if pe.classify(err.errno or 0) == "unsupported":
            return (f"no hardware PMU: perf_event_open(instructions) fails with "
                    f"{errno.errorcode.get(err.errno or 0, err.errno)} ({err.strerror}), as on a VM without "
                    f"a virtual PMU")
        raise
    os.close(fd)
    return None


def supported(text: str) -> dict[str, float]:
    return {dict(k)["event"]: v for k, v in values(text, "perfwatch_perf_event_supported").items()}


def denied(text: str) -> dict[str, float]:
    return {dict(k)["event"]: v for k, v in values(text, "perfwatch_perf_event_permission_denied").items()}


SOFTWARE = [e.name for e in pe.EVENTS.values() if not e.uses_pmu]
HARDWARE = [e.name for e in pe.EVENTS.values() if e.uses_pmu]


def test_page_faults_of_a_pinned_child_are_counted_on_its_cpu(start_exporter: StartExporter) -> None:
    exporter = start_exporter({"collectors": {"perf": {"events": ["page-faults", "minor-faults"]}}})
    cpu = str(last_online_cpu())
    pages = 4096
    before = exporter.scrape()
    # Fresh anonymous pages, one write each; no huge pages, or one fault would serve 512 pages.
    run_pinned(int(cpu), f"m = mmap.mmap(-1, {pages} * {PAGE})\nm.madvise(mmap.MADV_NOHUGEPAGE)\n"
                         f"for i in range({pages}):\n    m[i * {PAGE}] = 1\n")
    after = exporter.scrape()
    for metric in ("perfwatch_perf_page_faults_total", "perfwatch_perf_minor_faults_total"):
        rise = value(after, metric, cpu=cpu) - value(before, metric, cpu=cpu)
        assert rise >= pages, (metric, rise)


def test_context_switches_rise_under_a_sleep_loop(start_exporter: StartExporter) -> None:
    exporter = start_exporter({"collectors": {"perf": {"events": ["context-switches", "task-clock"]}}})
    cpu = str(last_online_cpu())
    sleeps = 300
    before = exporter.scrape()
    run_pinned(int(cpu), f"for _ in range({sleeps}):\n    time.sleep(0.0005)\n")  # each sleep: switch out
    after = exporter.scrape()
    metric = "perfwatch_perf_context_switches_total"
    assert value(after, metric, cpu=cpu) - value(before, metric, cpu=cpu) >= sleeps
    assert value(after, "perfwatch_perf_task_clock_seconds_total", cpu=cpu) > value(
        before, "perfwatch_perf_task_clock_seconds_total", cpu=cpu)


def test_every_event_is_reported_and_fds_match(start_exporter: StartExporter) -> None:
    exporter = start_exporter()  # defaults: every event, every online CPU
    text = exporter.scrape()
    cpus = len(pe.parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text()))
    status = supported(text)
    assert set(status) == set(pe.EVENTS)  # nothing dropped silently
    assert set(denied(text).values()) == {0.0}  # the tests run as root
    assert all(status[name] == 1 for name in SOFTWARE)
    has_pmu = missing_pmu() is None
    for name in HARDWARE:
        metric = "perfwatch_" + pe.EVENTS[name].metric
        series = values(text, metric)
        if not has_pmu:  # a VM without a PMU: supported 0, and no counter pretending to be zero
            assert status[name] == 0 and not series, name
        elif status[name]:
            assert len(series) == cpus, name
    if not has_pmu:
        assert "unsupported by this kernel/CPU" in exporter.service.log()
    opened = len(values(text, "perfwatch_perf_event_running_ratio"))  # one per open counter
    assert opened >= len(SOFTWARE) * cpus
    assert value(text, "perfwatch_perf_counters_open") == opened
    assert exporter.service.proc is not None
    assert perf_fds(exporter.service.proc.pid) == opened
    assert value(text, "node_scrape_collector_success", collector="perf") == 1
    assert exporter.stop() == 0  # SIGTERM
    assert f"perf: closed {opened} counters" in exporter.service.log()


def ensure_unprivileged_user() -> str | None:
    """A system user to run the exporter as; None when the tests already run unprivileged."""
    if os.geteuid() != 0:
        return None
    # The interpreter may live under a private home (pyenv in /root): let the user reach it.
    _make_traversable(Path(sys.executable).resolve().parent)
    _make_traversable(REPO)
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        nologin = shutil.which("nologin") or "/usr/sbin/nologin"
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", nologin, UNPRIVILEGED_USER],
                       check=True, capture_output=True, text=True)
    return UNPRIVILEGED_USER


def test_unprivileged_exporter_reports_refusal_and_still_answers(start_exporter: StartExporter) -> None:
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    exporter = start_exporter(None, user=ensure_unprivileged_user())
    text = exporter.scrape()  # HTTP 200 (checked by scrape)
    assert value(text, "node_scrape_collector_success", collector="perf") == 1
    assert value(text, "node_scrape_collector_success", collector="cpu") == 1
    status, refused = supported(text), denied(text)
    assert set(status) == set(refused) == set(pe.EVENTS)
    log = exporter.service.log()
    if paranoid >= 1:  # system-wide counting needs paranoid <= 0 without CAP_PERFMON
        for name in SOFTWARE:
            assert (status[name], refused[name]) == (0, 1), name
        if paranoid >= 2:  # kernel-mode counting refused too, before the PMU is even asked
            assert all(refused[name] == 1 for name in HARDWARE)
        assert value(text, "perfwatch_perf_counters_open") == 0
        assert "refused for permission" in log and "CAP_PERFMON" in log
        assert f"kernel.perf_event_paranoid={paranoid}" in log
        assert exporter.service.proc is not None
        assert perf_fds(exporter.service.proc.pid) == 0
    else:  # a machine that lets everyone count system-wide
        assert all(status[name] == 1 and refused[name] == 0 for name in SOFTWARE)
        assert value(text, "perfwatch_perf_counters_open") > 0

