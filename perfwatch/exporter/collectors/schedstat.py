"""Scheduler statistics per CPU, from /proc/schedstat (node_exporter's schedstat collector).

A `cpuN` line's 7th, 8th and 9th numbers: time spent running tasks and time tasks waited to run
(nanoseconds), and timeslices run. Kernels without CONFIG_SCHEDSTATS have no /proc/schedstat: no
series and no error (node_exporter returns "no data", its success 0; perfwatch's stays 1).
"""

from __future__ import annotations

from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, counter, parsing, read_text, register

NS_PER_SECOND = 1e9


@register
class SchedstatCollector(Collector[NoOptions]):
    name = "schedstat"
    description = "Seconds running and waiting, and timeslices, per CPU (/proc/schedstat)."
    node_collectors = ("schedstat",)

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("schedstat")
        try:
            text = read_text(path)
        except FileNotFoundError:
            return
        running = counter("schedstat_running_seconds_total", "Number of seconds CPU spent running a process.",
                          labels=["cpu"], namespace=NODE)
        waiting = counter("schedstat_waiting_seconds_total",
                          "Number of seconds spent by processing waiting for this CPU.", labels=["cpu"], namespace=NODE)
        timeslices = counter("schedstat_timeslices_total", "Number of timeslices executed by CPU.",
                             labels=["cpu"], namespace=NODE)
        with parsing(path):
            for line in text.splitlines():
                fields = line.split()
                if not fields or not fields[0].startswith("cpu") or not fields[0][3:].isdigit():
                    continue  # version, timestamp, domain lines
                cpu = [fields[0][3:]]
                running.add_metric(cpu, int(fields[7]) / NS_PER_SECOND)
                waiting.add_metric(cpu, int(fields[8]) / NS_PER_SECOND)
                timeslices.add_metric(cpu, float(int(fields[9])))
        yield running
        yield waiting
        yield timeslices
