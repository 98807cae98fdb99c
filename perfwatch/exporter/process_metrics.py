"""The exporter's own process_* metrics, as every Prometheus client library exposes them.

Names, types, help texts and values are client_python's ProcessCollector's (0.26), read from
the exporter's own /proc/self (not the host's procfs option: a container's exporter reports
itself), so dashboards and alerts written for any client's process metrics work unchanged.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Iterator

from perfwatch.common.families import CounterMetricFamily, GaugeMetricFamily, Metric
from perfwatch.exporter.collectors.base import read_bytes


class ProcessMetrics:
    """Yields process_cpu_seconds_total, process_{virtual,resident}_memory_bytes,
    process_start_time_seconds, process_open_fds and process_max_fds of the calling process."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.pagesize = resource.getpagesize()
        self.boot_time = 0.0  # 0: /proc unreadable, and then no metric at all (as client_python)
        try:
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self.boot_time = float(line.split()[1])
                        break
        except OSError:
            pass

    def collect(self) -> Iterator[Metric]:
        if not self.boot_time:
            return
        me = os.path.join(self.proc, "self")
        try:
            # Fields after the command name, which may hold spaces and ')': field 3 (state) is [0].
            fields = read_bytes(os.path.join(me, "stat")).rpartition(b")")[2].split()
        except OSError:
            fields = []
        if fields:
            yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                                    value=float(fields[20]))
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                                    value=float(fields[21]) * self.pagesize)
            yield GaugeMetricFamily("process_start_time_seconds",
                                    "Start time of the process since unix epoch in seconds.",
                                    value=float(fields[19]) / self.ticks + self.boot_time)
            yield CounterMetricFamily("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                                      value=float(fields[11]) / self.ticks + float(fields[12]) / self.ticks)
        try:
            max_fds = math.nan
            for line in read_bytes(os.path.join(me, "limits")).splitlines():
                if line.startswith(b"Max open files"):
                    soft = line.split()[3]
                    max_fds = math.inf if soft == b"unlimited" else float(soft)
                    break
            open_fds = len(os.listdir(os.path.join(me, "fd")))
        except OSError:
            return
        yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", value=open_fds)
        yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=max_fds)
