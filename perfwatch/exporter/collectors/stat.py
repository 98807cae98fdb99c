"""Kernel activity counters from /proc/stat: boot time, context switches, interrupts, forks, tasks."""

from __future__ import annotations

from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, counter, gauge, parsing, read_text, register

# /proc/stat key → (node_exporter's metric, help, is counter). `intr` starts with the total.
FIELDS = {
    "intr": ("intr_total", "Total number of interrupts serviced.", True),
    "ctxt": ("context_switches_total", "Total number of context switches.", True),
    "processes": ("forks_total", "Total number of forks.", True),
    "btime": ("boot_time_seconds", "Node boot time, in unixtime.", False),
    "procs_running": ("procs_running", "Number of processes in runnable state.", False),
    "procs_blocked": ("procs_blocked", "Number of processes blocked waiting for I/O to complete.", False),
}


@register
class StatCollector(Collector[NoOptions]):
    name = "stat"
    description = "Boot time, context switches, interrupts, forks, runnable and blocked tasks (/proc/stat)."
    node_collectors = ("stat",)

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("stat")
        with parsing(path):
            for line in read_text(path).splitlines():
                key, _, rest = line.partition(" ")
                field = FIELDS.get(key)
                if field is None:
                    continue
                name, doc, is_counter = field
                value = float(rest.split(None, 1)[0])
                make = counter if is_counter else gauge
                yield make(name, doc, value, namespace=NODE)
