"""Processes and threads by state (/proc/<pid>/stat, /proc/<pid>/task/<tid>/stat), with the
kernel's limits (node_exporter's processes collector)."""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import (
    NODE,
    Collector,
    NoOptions,
    gauge,
    parsing,
    read_text,
    register,
)

# The state letters of /proc/<pid>/stat (proc(5)), as node_exporter labels them. These are always
# emitted (0 included), so that a state going away reads as 0, not as a missing series; others
# (X, K, W, P on some kernels) appear when seen.
STATES = ("R", "S", "D", "Z", "T", "t", "I")

LIMITS = (("processes_max_processes", "pid_max", "Number of max PIDs limit"),
          ("processes_max_threads", "threads-max", "Limit of threads in the system"))
LIMITS_MAX_AGE = 60.0  # seconds


# How many stat files stay open between scrapes, at most (a quarter of the open-files limit if
# that is lower): each holds a file descriptor and a page of kernel buffer for as long as its
# process lives, ~1 MiB of kernel memory for 256.
KEPT_OPEN = 256
STAT_MAX = 1024  # a stat line is ~300 bytes; comm is at most 64


class StatFiles:
    """/proc/<pid>/stat and /proc/<pid>/task/<tid>/stat, kept open between scrapes and read again
    with pread(): opening a /proc file walks its path (a pid lookup, a proc inode) and cost as much
    as reading it, 1.30 against 0.66 ms for 70 processes here after a 50 ms pause. Up to `limit`
    stay open; the others are opened and closed at each read. A process that exits leaves its
    file reading ESRCH, and a new process that gets its pid is another file: both are told at the
    read, which then opens the path again. Files not read in a scrape (their process gone from
    /proc) are closed by sweep()."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}
        self.read_now: set[str] = set()

    def read(self, path: str) -> bytes | None:
        """The stat line at `path`, or None if its process has gone or it cannot be read."""
        fd = self.open.get(path)
        if fd is not None:
            try:
                data = os.pread(fd, STAT_MAX, 0)
            except OSError:  # ESRCH: exited; the pid may be another process' now
                data = b""
            if data:
                self.read_now.add(path)
                return data
            del self.open[path]
            os.close(fd)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError, PermissionError):
            return None
        try:
            data = os.read(fd, STAT_MAX)
        except (ProcessLookupError, PermissionError):
            data = b""
        if data and len(self.open) < self.limit:
            self.open[path] = fd
            self.read_now.add(path)
        else:
            os.close(fd)
        return data or None

    def sweep(self) -> None:
        """Close the files that were not read since the last sweep."""
        for path in [p for p in self.open if p not in self.read_now]:
            os.close(self.open.pop(path))
        self.read_now = set()

    def close(self) -> None:
        for fd in self.open.values():
            os.close(fd)
        self.open.clear()


def state_of(stat: bytes) -> bytes:
    # "pid (comm) S ppid ...": comm may hold spaces and ')', so look after the last ')'.
    return stat[stat.rindex(b")") + 2:][:1]


@register
class ProcessesCollector(Collector[NoOptions]):
    name = "processes"
    description = "Processes and threads per state (R, S, D, Z, ...), PIDs, threads, and pid/thread limits."
    node_collectors = ("processes",)

    _limits: dict[str, tuple[str, float]] | None = None
    _limits_read_at = 0.0

    def setup(self) -> None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.stat_files = StatFiles(KEPT_OPEN if soft == resource.RLIM_INFINITY else min(KEPT_OPEN, soft // 4))

    def close(self) -> None:
        self.stat_files.close()

    def collect(self) -> Iterator[Metric]:
        states: Counter[bytes] = Counter()
        thread_states: Counter[bytes] = Counter()
        threads = pids_seen = 0
        proc = self.paths.procfs
        with os.scandir(proc) as entries:
            pids = [e.name for e in entries if e.name.isdigit()]
        read_stat = self.stat_files.read
        for pid in pids:
            path = f"{proc}/{pid}/stat"
            stat = read_stat(path)
            if not stat:
                continue
            with parsing(path):
                fields = stat[stat.rindex(b")") + 2:].split(None, 18)
                count = int(fields[17])  # num_threads, field 20 of proc(5)
            state = fields[0]
            pids_seen += 1
            states[state] += 1
            threads += count
            if count <= 1:  # the only thread is the process itself: its state (node_exporter does the same)
                thread_states[state] += 1
                continue
            self.count_threads(f"{proc}/{pid}/task", pid, state, thread_states)
        self.stat_files.sweep()
        family = gauge("processes_state", "Number of processes in each state.", labels=["state"], namespace=NODE)
        thread_family = gauge("processes_threads_state", "Number of threads in each state.",
                              labels=["thread_state"], namespace=NODE)
        for counts, target in ((states, family), (thread_states, thread_family)):
            for code in sorted(set(STATES) | {c.decode("ascii", "replace") for c in counts}):
                target.add_metric([code], float(counts.get(code.encode(), 0)))
        yield family
        yield thread_family
        yield gauge("processes_pids", "Number of PIDs", float(pids_seen), namespace=NODE)
        yield gauge("processes_threads", "Allocated threads in system", float(threads), namespace=NODE)
        for name, (doc, limit) in self.limits().items():
            yield gauge(name, doc, limit, namespace=NODE)

    def count_threads(self, task_dir: str, pid: str, state: bytes, thread_states: Counter[bytes]) -> None:
        try:
            with os.scandir(task_dir) as entries:
                tids = [e.name for e in entries if e.name.isdigit()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return
        for tid in tids:
            if tid == pid:
                thread_states[state] += 1
                continue
            stat = self.stat_files.read(f"{task_dir}/{tid}/stat")
            if stat:
                thread_states[state_of(stat)] += 1

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
