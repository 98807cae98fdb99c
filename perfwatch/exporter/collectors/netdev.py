"""Network traffic per interface, from /proc/net/dev (node_exporter's netdev collector)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from perfwatch.common.config import Regex
from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, counter, parsing, read_bytes, read_text, register

# The columns of /proc/net/dev after "iface:", in order, under node_exporter's names. The kernel
# folds the detailed error counters into them exactly as node_exporter's netlink path does
# (drop = rx_dropped + rx_missed_errors, frame = frame + length + over + crc errors, carrier =
# carrier + aborted + window + heartbeat errors), so the values are the same either way.
COLUMNS = (
    "receive_bytes", "receive_packets", "receive_errs", "receive_drop",
    "receive_fifo", "receive_frame", "receive_compressed", "receive_multicast",
    "transmit_bytes", "transmit_packets", "transmit_errs", "transmit_drop",
    "transmit_fifo", "transmit_colls", "transmit_carrier", "transmit_compressed",
)


@dataclasses.dataclass
class NetdevOptions:
    interfaces_exclude: Regex = dataclasses.field(default=Regex("lo"), metadata={
        "help": "Interfaces not reported (anchored regex); the default, node_exporter's, hides loopback."})


@register
class NetdevCollector(Collector[NetdevOptions]):
    name = "netdev"
    description = "Network traffic per device: bytes, packets, errors, drops, fifo, frame, collisions, carrier, ..."
    node_collectors = ("netdev",)

    def setup(self) -> None:
        self.exclude = self.options.interfaces_exclude.compiled

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("net", "dev")
        rows = []
        with parsing(path):
            for line in read_text(path).splitlines()[2:]:  # two header lines
                # Interface names cannot contain ':'; large counters may touch it ("eth0:123").
                device, _, columns = line.partition(":")
                device = device.strip()
                if not self.exclude.match(device):
                    numbers = [float(v) for v in columns.split()]
                    if len(numbers) < len(COLUMNS):
                        raise ValueError(f"{device}: {len(numbers)} columns, not {len(COLUMNS)}")
                    rows.append((device, numbers))
        for i, key in enumerate(COLUMNS):
            family = counter(f"network_{key}_total", f"Network device statistic {key}.", labels=["device"],
                             namespace=NODE)
            for device, values in rows:
                family.add_metric([device], values[i])
            yield family
        # rx_nohandler (packets dropped for want of a protocol handler) is not in /proc/net/dev;
        # node_exporter gets it over netlink, the same counter as this sysfs file (kernel ≥ 4.6).
        nohandler = counter("network_receive_nohandler_total", "Network device statistic receive_nohandler.",
                            labels=["device"], namespace=NODE)
        for device, _ in rows:
            try:
                raw = read_bytes(self.paths.sys("class", "net", device, "statistics", "rx_nohandler"))
            except OSError:
                continue
            nohandler.add_metric([device], float(raw))
        if nohandler.samples:
            yield nohandler
