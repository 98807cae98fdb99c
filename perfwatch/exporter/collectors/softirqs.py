"""Soft interrupts by type, from /proc/softirqs (summed over CPUs to keep the labels bounded)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, counter, parsing, read_text, register


@register
class SoftirqsCollector(Collector[NoOptions]):
    name = "softirqs"
    description = "Soft interrupts serviced per type (net_rx, timer, sched, ...), all CPUs together."

    def collect(self) -> Iterator[Metric]:
        family = counter("softirqs_total", "Soft interrupts serviced since boot, summed over CPUs.",
                         labels=["type"])
        path = self.paths.proc("softirqs")
        with parsing(path):
            for line in read_text(path).splitlines()[1:]:  # first line: CPU names
                kind, _, counts = line.partition(":")
                if counts:
                    family.add_metric([kind.strip().lower()], float(sum(map(int, counts.split()))))
        yield family
