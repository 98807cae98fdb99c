"""Network traffic per interface, from /proc/net/dev."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.common.config import Regex
from perfwatch.exporter.collectors.base import Collector, counter, parsing, read_text, register

# Column of /proc/net/dev after "iface:" → (metric, help). Receive columns 0-7, transmit 8-15.
COLUMNS = (
    (0, "network_receive_bytes_total", "Bytes received."),
    (1, "network_receive_packets_total", "Packets received."),
    (2, "network_receive_errors_total", "Receive errors."),
    (3, "network_receive_drops_total", "Received packets dropped."),
    (8, "network_transmit_bytes_total", "Bytes transmitted."),
    (9, "network_transmit_packets_total", "Packets transmitted."),
    (10, "network_transmit_errors_total", "Transmit errors."),
    (11, "network_transmit_drops_total", "Packets dropped on transmit."),
)


@dataclasses.dataclass
class NetdevOptions:
    interfaces_exclude: Regex = dataclasses.field(default=Regex("lo"), metadata={
        "help": "Interfaces not reported (anchored regex); the default hides loopback."})


@register
class NetdevCollector(Collector[NetdevOptions]):
    name = "netdev"
    description = "Network traffic per interface: bytes, packets, errors, drops."

    def setup(self) -> None:
        self.exclude = self.options.interfaces_exclude.compiled

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("net", "dev")
        rows = []
        with parsing(path):
            for line in read_text(path).splitlines()[2:]:  # two header lines
                # Interface names cannot contain ':'; large counters may touch it ("eth0:123").
                interface, _, columns = line.partition(":")
                interface = interface.strip()
                if not self.exclude.match(interface):
                    numbers = [float(v) for v in columns.split()]
                    rows.append((interface, [numbers[column] for column, _, _ in COLUMNS]))
        for i, (_, name, doc) in enumerate(COLUMNS):
            family = counter(name, doc, labels=["interface"])
            for interface, values in rows:
                family.add_metric([interface], values[i])
            yield family
