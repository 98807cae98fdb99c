"""Load averages, from /proc/loadavg."""

from __future__ import annotations

from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, parsing, read_text, register


@register
class LoadavgCollector(Collector[NoOptions]):
    name = "loadavg"
    description = "Load averages over 1, 5 and 15 minutes (node_load1, node_load5, node_load15)."
    node_collectors = ("loadavg",)

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("loadavg")
        with parsing(path):
            loads = [float(field) for field in read_text(path).split()[:3]]
            for minutes, load in zip((1, 5, 15), loads, strict=True):
                yield gauge(f"load{minutes}", f"{minutes}m load average.", load, namespace=NODE)
