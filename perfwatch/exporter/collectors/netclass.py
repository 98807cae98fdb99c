"""Network interface properties from /sys/class/net/<device>/ (node_exporter's netclass collector).

Each file is one number (decimal or 0x-hex) or string; a file that is absent, or that the driver
refuses (EINVAL: carrier/speed/duplex of an interface that is down; EOPNOTSUPP), is left out,
as procfs does; any other read error fails the collector. Speed is Mbit/s in sysfs and bytes/s
here, and -1 ("unknown", virtual NICs) is exposed as -125000 like node_exporter's default
(`--collector.netclass.ignore-invalid-speed` is off in 1.5; option `ignore_invalid_speed`).
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Iterator

from perfwatch.common.config import Regex
from perfwatch.common.families import CounterMetricFamily, GaugeMetricFamily, Metric
from perfwatch.exporter.collectors.base import NODE, Collector, Directory, counter, gauge, register

STRINGS = ("address", "broadcast", "duplex", "ifalias", "operstate")
# metric suffix → (sysfs file, counter?) in node_exporter's order
NUMBERS = (
    ("address_assign_type", "addr_assign_type", False),
    ("carrier", "carrier", False),
    ("carrier_changes_total", "carrier_changes", True),
    ("carrier_up_changes_total", "carrier_up_count", True),
    ("carrier_down_changes_total", "carrier_down_count", True),
    ("device_id", "dev_id", False),
    ("dormant", "dormant", False),
    ("flags", "flags", False),
    ("iface_id", "ifindex", False),
    ("iface_link", "iflink", False),
    ("iface_link_mode", "link_mode", False),
    ("mtu_bytes", "mtu", False),
    ("name_assign_type", "name_assign_type", False),
    ("net_dev_group", "netdev_group", False),
    ("speed_bytes", "speed", False),
    ("transmit_queue_length", "tx_queue_len", False),
    ("protocol_type", "type", False),
)
_SKIPPED = (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP)
FILES = (*STRINGS, *(filename for _, filename, _ in NUMBERS))  # a device's files, read in one call
OPERSTATE = STRINGS.index("operstate")


@dataclasses.dataclass
class NetclassOptions:
    ignored_devices: Regex = dataclasses.field(default=Regex(""), metadata={
        "help": "Devices not reported (anchored regex; node_exporter's --collector.netclass.ignored-devices, "
                "default none)."})
    ignore_invalid_speed: bool = dataclasses.field(default=False, metadata={
        "help": "Leave out node_network_speed_bytes where the speed is unknown (-1)."})


def _number(text: str) -> int:
    return int(text[2:], 16) if text.startswith("0x") else int(text)


@register
class NetclassCollector(Collector[NetclassOptions]):
    name = "netclass"
    description = "Network interface state: up, carrier, speed, MTU, operstate, address (/sys/class/net)."
    node_collectors = ("netclass",)

    def setup(self) -> None:
        self.ignored = self.options.ignored_devices.compiled

    def collect(self) -> Iterator[Metric]:
        directory = self.paths.sys("class", "net")
        up = gauge("network_up", "Value is 1 if operstate is 'up', 0 otherwise.", labels=["device"], namespace=NODE)
        info = gauge("network_info", "Non-numeric data from /sys/class/net/<iface>, value is always 1.",
                     labels=["device", *STRINGS], namespace=NODE)
        families = {
            name: (counter if is_counter else gauge)(f"network_{name}", f"Network device property: {name}",
                                                    labels=["device"], namespace=NODE)
            for name, _, is_counter in NUMBERS
        }
        for device in sorted(os.listdir(directory)):
            if self.ignored.match(device):
                continue
            try:
                files = Directory(os.path.join(directory, device))
            except (NotADirectoryError, FileNotFoundError):  # a bonding_masters file; gone meanwhile
                continue
            with files:
                self.add_device(device, files, up, info, families)
        # node_exporter writes no HELP/TYPE for a family without samples (carrier of no device)
        yield from (family for family in (up, info, *families.values()) if family.samples)

    def add_device(self, device: str, files: Directory, up: GaugeMetricFamily, info: GaugeMetricFamily,
                   families: dict[str, GaugeMetricFamily | CounterMetricFamily]) -> None:
        values = files.read_attributes(FILES, _SKIPPED)
        strings = [text or "" for text in values[:len(STRINGS)]]
        up.add_metric([device], 1.0 if strings[OPERSTATE] == "up" else 0.0)
        info.add_metric([device, *strings], 1.0)
        for (name, filename, _), text in zip(NUMBERS, values[len(STRINGS):], strict=True):
            if text is None:
                continue
            try:
                value = _number(text)
            except ValueError:
                raise ValueError(f"cannot parse {os.path.join(files.path, filename)}: {text!r}") from None
            if name == "speed_bytes":
                if value < 0 and self.options.ignore_invalid_speed:
                    continue
                value = value * 1000 * 1000 // 8 if value >= 0 else -(-value * 1000 * 1000 // 8)
            families[name].add_metric([device], float(value))
