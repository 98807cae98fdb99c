"""The kernel's entropy pool, from /proc/sys/kernel/random (node_exporter's entropy collector)."""

from __future__ import annotations

from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, parsing, read_text, register


@register
class EntropyCollector(Collector[NoOptions]):
    name = "entropy"
    description = "Available entropy and the entropy pool's size (/proc/sys/kernel/random)."
    node_collectors = ("entropy",)

    def collect(self) -> Iterator[Metric]:
        # As node_exporter: a missing file is an error (the kernel always has both).
        for filename, metric, doc in (("entropy_avail", "entropy_available_bits", "Bits of available entropy."),
                                      ("poolsize", "entropy_pool_size_bits", "Bits of entropy pool.")):
            path = self.paths.proc("sys", "kernel", "random", filename)
            with parsing(path):
                value = int(read_text(path).strip())
            yield gauge(metric, doc, float(value), namespace=NODE)
