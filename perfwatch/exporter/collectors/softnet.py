"""Packet processing per CPU, from /proc/net/softnet_stat (node_exporter 1.5's softnet collector).

One line per CPU, hexadecimal columns: processed, dropped, time_squeezed, ... As in 1.5, the `cpu`
label is the line's index; newer node_exporter releases take it from the line's 13th column (the
CPU id, kernel 5.10+), which differs only where CPUs are offline, and add more columns
(backlog_len, received_rps, flow_limit_count).
"""

from __future__ import annotations

from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, counter, parsing, read_text, register

MIN_COLUMNS = 9  # procfs' minimum: older kernels print 9 or 10 columns


@register
class SoftnetCollector(Collector[NoOptions]):
    name = "softnet"
    description = "Packets processed, dropped and time squeezes per CPU (/proc/net/softnet_stat)."
    node_collectors = ("softnet",)

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("net", "softnet_stat")
        processed = counter("softnet_processed_total", "Number of processed packets", labels=["cpu"], namespace=NODE)
        dropped = counter("softnet_dropped_total", "Number of dropped packets", labels=["cpu"], namespace=NODE)
        squeezed = counter("softnet_times_squeezed_total", "Number of times processing packets ran out of quota",
                           labels=["cpu"], namespace=NODE)
        with parsing(path):
            for cpu, line in enumerate(read_text(path).splitlines()):
                columns = line.split()
                if len(columns) < MIN_COLUMNS:
                    raise ValueError(f"{len(columns)} columns, at least {MIN_COLUMNS} expected: {line!r}")
                label = [str(cpu)]
                processed.add_metric(label, float(int(columns[0], 16)))
                dropped.add_metric(label, float(int(columns[1], 16)))
                squeezed.add_metric(label, float(int(columns[2], 16)))
        yield processed
        yield dropped
        yield squeezed
