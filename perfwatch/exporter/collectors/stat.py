"""Kernel activity counters from /proc/stat: context switches, interrupts, forks, runnable tasks."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, counter, gauge, parsing, read_text, register

# /proc/stat key → (metric, help, is counter). `intr` starts with the total over all interrupts.
FIELDS = {
    "ctxt": ("context_switches_total", "Context switches since boot.", True),
    "intr": ("interrupts_total", "Interrupts serviced since boot (all sources).", True),
    "processes": ("forks_total", "Processes and threads created since boot.", True),
    "procs_running": ("procs_running", "Tasks runnable now (running or waiting for a CPU).", False),
    "procs_blocked": ("procs_blocked", "Tasks blocked now, waiting for I/O to complete.", False),
}


@register
class StatCollector(Collector[NoOptions]):
    name = "stat"
    description = "Context switches, interrupts, forks, runnable and blocked tasks (/proc/stat)."

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
                yield counter(name, doc, value) if is_counter else gauge(name, doc, value)
