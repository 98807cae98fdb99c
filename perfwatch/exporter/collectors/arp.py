"""ARP table entries per device, from /proc/net/arp (node_exporter 1.5's arp collector).

node_exporter 1.5 reads /proc/net/arp; newer releases ask netlink by default (`--collector.arp.netlink`),
which counts the same neighbours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from perfwatch.common.config import Regex
from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, gauge, read_text, register


@dataclasses.dataclass
class ArpOptions:
    device_include: Regex | None = dataclasses.field(default=None, metadata={
        "help": "Only these devices (anchored regex; node_exporter's --collector.arp.device-include)."})
    device_exclude: Regex | None = dataclasses.field(default=None, metadata={
        "help": "Not these devices (anchored regex; --collector.arp.device-exclude)."})


@register
class ArpCollector(Collector[ArpOptions]):
    name = "arp"
    description = "ARP entries per device (/proc/net/arp)."
    node_collectors = ("arp",)

    def setup(self) -> None:
        self.include = self.options.device_include.compiled if self.options.device_include is not None else None
        self.exclude = self.options.device_exclude.compiled if self.options.device_exclude is not None else None

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("net", "arp")
        entries: dict[str, int] = {}
        for line in read_text(path).splitlines():
            columns = line.split()
            if len(columns) < 6:
                raise ValueError(f"cannot parse {path}: unexpected ARP table format: {line!r}")
            if columns[0] != "IP":  # the header
                entries[columns[-1]] = entries.get(columns[-1], 0) + 1
        family = gauge("arp_entries", "ARP entries by device", labels=["device"], namespace=NODE)
        for device, count in sorted(entries.items()):
            if self.exclude is not None and self.exclude.match(device):
                continue
            if self.include is not None and not self.include.match(device):
                continue
            family.add_metric([device], float(count))
        if family.samples:
            yield family
