"""Processes by state and thread counts (/proc/<pid>/stat), with the kernel's limits."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, gauge, parsing, read_text, register

# The state letter of /proc/<pid>/stat (proc(5)). Every name is always emitted (0 included) so
# that a state going away reads as 0, not as a missing series.
STATES = {
    b"R": "running", b"S": "sleeping", b"D": "disk_sleep", b"Z": "zombie", b"T": "stopped",
    b"t": "tracing_stop", b"X": "dead", b"I": "idle", b"P": "parked", b"W": "waking",
}

LIMITS = (("processes_max", "pid_max", "Process ids wrap around at this value (kernel.pid_max)."),
          ("threads_max", "threads-max", "Most threads the system allows (kernel.threads-max)."))
LIMITS_MAX_AGE = 60.0  # seconds


def read_stat(path: str) -> bytes | None:
    """The stat line of one process, or None if it has gone away meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, PermissionError):
        return None
    try:
        return os.read(fd, 1024)
    except ProcessLookupError:  # exited between open and read
        return None
    finally:
        os.close(fd)


@register
class ProcessesCollector(Collector[NoOptions]):
    name = "processes"
    description = "Processes per state (running, sleeping, disk_sleep, zombie, ...), threads, and pid/thread limits."

    _limits: dict[str, tuple[str, float]] | None = None
    _limits_read_at = 0.0

    def collect(self) -> Iterator[Metric]:
        states: Counter[bytes] = Counter()
        threads = 0
        proc = self.paths.procfs
        with os.scandir(proc) as entries:
            pids = [e.name for e in entries if e.name.isdigit()]
        for pid in pids:
            path = f"{proc}/{pid}/stat"
            stat = read_stat(path)
            if not stat:
                continue
            with parsing(path):
                # "pid (comm) S ppid ...": comm may hold spaces and ')', so split after the last ')'.
                fields = stat[stat.rindex(b")") + 2:].split(None, 18)
                threads += int(fields[17])  # num_threads, field 20 of proc(5)
            states[fields[0]] += 1
        family = gauge("processes", "Processes in each state.", labels=["state"])
        for code, state in STATES.items():
            family.add_metric([state], float(states.pop(code, 0)))
        yield family
        yield gauge("threads", "Threads of all processes.", float(threads))
        for name, (doc, limit) in self.limits().items():
            yield gauge(name, doc, limit)

    def limits(self) -> dict[str, tuple[str, float]]:
        # Reading a /proc/sys file costs ~75 µs (10x another /proc file), and these two change only
        # when an operator runs sysctl: re-read them once a minute, not at every scrape.
        now = time.monotonic()
        if self._limits is None or now - self._limits_read_at >= LIMITS_MAX_AGE:
            kernel = self.paths.proc("sys", "kernel")
            limits = {}
            for name, file, doc in LIMITS:
                path = f"{kernel}/{file}"
                with parsing(path):
                    limits[name] = (doc, float(read_text(path)))
            self._limits, self._limits_read_at = limits, now
        return self._limits
