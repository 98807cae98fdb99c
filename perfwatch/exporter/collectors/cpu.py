"""CPU time per CPU and mode, from /proc/stat."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, counter, parsing, read_text, register

# Column order of the `cpuN` lines in /proc/stat (proc(5)). guest and guest_nice are already
# counted inside user and nice, so they get a metric of their own instead of a mode.
MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
GUEST_MODES = ("user", "nice")


@register
class CPUCollector(Collector[NoOptions]):
    name = "cpu"
    description = "Seconds each CPU spent in each mode (user, system, idle, iowait, ...)."

    def setup(self) -> None:
        self.ticks_per_second = float(os.sysconf("SC_CLK_TCK"))

    def collect(self) -> Iterator[Metric]:
        seconds = counter("cpu_seconds_total", "Seconds the CPU spent in each mode.",
                          labels=["cpu", "mode"])
        guest = counter("cpu_guest_seconds_total",
                        "Seconds the CPU spent running guests (also counted in user and nice).",
                        labels=["cpu", "mode"])
        hz = self.ticks_per_second
        path = self.paths.proc("stat")
        with parsing(path):
            for line in read_text(path).splitlines():
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                fields = line.split()
                cpu = fields[0][3:]
                values = fields[1:]
                for mode, value in zip(MODES, values, strict=False):
                    seconds.add_metric([cpu, mode], int(value) / hz)
                for mode, value in zip(GUEST_MODES, values[8:10], strict=False):
                    guest.add_metric([cpu, mode], int(value) / hz)
        yield seconds
        yield guest
