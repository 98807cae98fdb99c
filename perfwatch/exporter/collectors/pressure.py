"""Pressure stall information (PSI), from /proc/pressure/{cpu,memory,io,irq}."""

from __future__ import annotations

import errno
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import (
    NAMESPACE,
    NODE,
    Collector,
    NoOptions,
    counter,
    parsing,
    read_text,
    register,
)

# (resource, line) → (namespace, metric, help). node_exporter reads the "some" line of cpu, both
# lines of memory and io, and (1.9+) the "full" line of irq; the system-wide cpu "full" line
# (kernel ≥ 5.13) has no node_exporter metric, so it keeps perfwatch's prefix.
LINES = {
    ("cpu", "some"): (NODE, "pressure_cpu_waiting_seconds_total",
                      "Total time in seconds that processes have waited for CPU time"),
    ("cpu", "full"): (NAMESPACE, "pressure_cpu_stalled_seconds_total",
                      "Total time in seconds no process could make progress for lack of CPU time"),
    ("memory", "some"): (NODE, "pressure_memory_waiting_seconds_total",
                         "Total time in seconds that processes have waited for memory"),
    ("memory", "full"): (NODE, "pressure_memory_stalled_seconds_total",
                         "Total time in seconds no process could make progress due to memory congestion"),
    ("io", "some"): (NODE, "pressure_io_waiting_seconds_total",
                     "Total time in seconds that processes have waited due to IO congestion"),
    ("io", "full"): (NODE, "pressure_io_stalled_seconds_total",
                     "Total time in seconds no process could make progress due to IO congestion"),
    ("irq", "full"): (NODE, "pressure_irq_stalled_seconds_total",
                      "Total time in seconds no process could make progress due to IRQ congestion"),
}
RESOURCES = ("cpu", "memory", "io", "irq")


@register
class PressureCollector(Collector[NoOptions]):
    name = "pressure"
    description = "Pressure stall information: time tasks waited for CPU, memory, I/O and IRQs (kernel ≥ 4.20)."
    node_collectors = ("pressure",)

    def collect(self) -> Iterator[Metric]:
        for resource in RESOURCES:
            path = self.paths.proc("pressure", resource)
            try:
                text = read_text(path)
            except OSError as err:
                # No /proc/pressure (kernel without PSI, or psi=0), no irq file (before 6.1, or
                # without CONFIG_IRQ_TIME_ACCOUNTING) or EOPNOTSUPP: nothing to report.
                if err.errno in (errno.ENOENT, errno.EOPNOTSUPP):
                    continue
                raise
            for line in text.splitlines():
                kind, _, fields = line.partition(" ")
                field = LINES.get((resource, kind))
                if field is None:
                    continue
                with parsing(path):
                    total = int(fields.rpartition("total=")[2]) / 1e6  # microseconds
                namespace, name, doc = field
                yield counter(name, doc, total, namespace=namespace)
