"""Load averages, from /proc/loadavg."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from exporter.collectors.base import Collector, gauge, read_text, register


@register
class LoadavgCollector(Collector):
    name = "loadavg"
    description = "Load averages over 1, 5 and 15 minutes."

    def collect(self) -> Iterator[Metric]:
        fields = read_text(self.paths.proc("loadavg")).split()
        for minutes, text in zip((1, 5, 15), fields[:3], strict=True):
            yield gauge(f"load{minutes}", f"{minutes}-minute load average (runnable and uninterruptible tasks).",
                        float(text))
