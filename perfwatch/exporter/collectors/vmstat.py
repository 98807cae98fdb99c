"""Paging activity and OOM kills, from /proc/vmstat."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, counter, parsing, read_text, register

# /proc/vmstat key → (metric, help, multiplier to the base unit). pgpgin/pgpgout are in KiB
# (the kernel turns sectors into kilobytes before printing them), whatever their name says.
FIELDS = {
    "pgfault": ("page_faults_total", "Page faults (minor and major) since boot.", 1),
    "pgmajfault": ("major_page_faults_total", "Major page faults (needing I/O) since boot.", 1),
    "pgpgin": ("paged_in_bytes_total", "Bytes paged in from block devices since boot.", 1024),
    "pgpgout": ("paged_out_bytes_total", "Bytes paged out to block devices since boot.", 1024),
    "oom_kill": ("oom_kills_total", "Processes killed by the out-of-memory killer since boot.", 1),
}


@register
class VmstatCollector(Collector[NoOptions]):
    name = "vmstat"
    description = "Page faults, major page faults, bytes paged in and out, OOM kills (/proc/vmstat)."

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("vmstat")
        with parsing(path):
            for line in read_text(path).splitlines():
                key, _, value = line.partition(" ")
                field = FIELDS.get(key)
                if field is not None:
                    name, doc, scale = field
                    yield counter(name, doc, float(int(value) * scale))
