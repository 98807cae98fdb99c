"""Soft interrupts by vector, from the `softirq` line of /proc/stat (summed over CPUs).

node_exporter's name for these is its stat collector's `node_softirqs_total{vector}` (behind
`--collector.stat.softirq`): the same line, the same vector names.
"""

from __future__ import annotations

from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, counter, parsing, read_text, register

# The columns after the total, in the kernel's order (softirq_to_name[] in kernel/softirq.c);
# node_exporter names IRQ_POLL by its older name, block_iopoll.
VECTORS = ("hi", "timer", "net_tx", "net_rx", "block", "block_iopoll", "tasklet", "sched", "hrtimer", "rcu")


@register
class SoftirqsCollector(Collector[NoOptions]):
    name = "softirqs"
    description = "Soft interrupts serviced per vector (net_rx, timer, sched, ...), all CPUs together."
    node_collectors = ("stat",)  # with --collector.stat.softirq

    def collect(self) -> Iterator[Metric]:
        family = counter("softirqs_total", "Number of softirq calls.", labels=["vector"], namespace=NODE)
        path = self.paths.proc("stat")
        with parsing(path):
            for line in read_text(path).splitlines():
                if line.startswith("softirq "):
                    for vector, count in zip(VECTORS, line.split()[2:], strict=False):
                        family.add_metric([vector], float(count))
                    break
        yield family
