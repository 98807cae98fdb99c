"""The host's clock and boot time."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, gauge, parsing, read_text, register


@register
class TimeCollector(Collector[NoOptions]):
    name = "time"
    description = "Current system time and boot time (seconds since the epoch)."

    boot_time: float | None = None

    def collect(self) -> Iterator[Metric]:
        if self.boot_time is None:
            # btime only changes with a reboot, which restarts the exporter too: read it once.
            path = self.paths.proc("stat")
            with parsing(path):
                self.boot_time = next(float(line.split()[1]) for line in read_text(path).splitlines()
                                      if line.startswith("btime "))
        yield gauge("boot_time_seconds", "When the system booted, in seconds since the epoch.", self.boot_time)
        yield gauge("time_seconds", "The system clock, in seconds since the epoch.", time.time())
