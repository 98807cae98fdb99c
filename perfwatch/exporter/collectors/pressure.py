"""Pressure stall information (PSI), from /proc/pressure/{cpu,memory,io}."""

from __future__ import annotations

import errno
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, counter, parsing, read_text, register

RESOURCES = ("cpu", "memory", "io")
KINDS = {
    "some": ("waiting", "Seconds in which at least one task was stalled waiting for {}."),
    "full": ("stalled", "Seconds in which all non-idle tasks were stalled waiting for {} at once."),
}


@register
class PressureCollector(Collector[NoOptions]):
    name = "pressure"
    description = "Pressure stall information: time tasks waited for CPU, memory and I/O (kernel ≥ 4.20)."

    def collect(self) -> Iterator[Metric]:
        for resource in RESOURCES:
            path = self.paths.proc("pressure", resource)
            try:
                text = read_text(path)
            except OSError as err:
                # No /proc/pressure (kernel without PSI, or psi=0) or EOPNOTSUPP: nothing to report.
                if err.errno in (errno.ENOENT, errno.EOPNOTSUPP):
                    continue
                raise
            for line in text.splitlines():
                kind, _, fields = line.partition(" ")
                if kind not in KINDS:
                    continue
                with parsing(path):
                    total = int(fields.rpartition("total=")[2]) / 1e6  # microseconds
                suffix, doc = KINDS[kind]
                yield counter(f"pressure_{resource}_{suffix}_seconds_total", doc.format(resource), total)
