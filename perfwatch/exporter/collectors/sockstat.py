"""Socket counts per protocol from /proc/net/sockstat and sockstat6 (node_exporter's sockstat).

The kernel keeps these as counters, so reading them costs the same (about 20 µs) however many
sockets there are and however large its connection hash table is. They cover what most TCP
dashboards and alerts use: TCP sockets in use, orphaned, in TIME_WAIT, allocated, and their
memory. Connections per TCP state need a walk of the whole hash table: that is tcpstat.py, off by
default as in node_exporter.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, parsing, read_text, register

# The fields node_exporter (procfs.NetSockstat) reads, in its order; others are ignored, as there.
FIELDS = ("inuse", "orphan", "tw", "alloc", "mem", "memory")


def parse_sockstat(text: str) -> tuple[int | None, list[tuple[str, dict[str, int]]]]:
    """`sockets: used N` (None if absent) and each protocol's known fields, in file order.

    "TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 32": key/value pairs after the protocol.
    """
    used = None
    protocols = []
    for line in text.splitlines():
        protocol, sep, rest = line.partition(":")
        if not sep:
            continue
        pairs = rest.split()
        values = dict(zip(pairs[::2], map(int, pairs[1::2]), strict=True))
        if protocol == "sockets":
            used = values["used"]
        else:
            protocols.append((protocol, {key: values[key] for key in FIELDS if key in values}))
    return used, protocols


@register
class SockstatCollector(Collector[NoOptions]):
    name = "sockstat"
    description = "Sockets per protocol: in use, orphaned, TIME_WAIT, allocated, memory (/proc/net/sockstat*)."
    node_collectors = ("sockstat",)

    def setup(self) -> None:
        self.page_size = os.sysconf("SC_PAGE_SIZE")

    def collect(self) -> Iterator[Metric]:
        for name in ("sockstat", "sockstat6"):  # either may be missing: no IPv4 or IPv6 in this kernel
            path = self.paths.proc("net", name)
            try:
                text = read_text(path)
            except FileNotFoundError:
                continue
            with parsing(path):
                used, protocols = parse_sockstat(text)
            if used is not None and name == "sockstat":
                yield gauge("sockstat_sockets_used", "Number of IPv4 sockets in use.", float(used), namespace=NODE)
            for protocol, values in protocols:
                if "mem" in values:  # pages; node_exporter adds the bytes
                    values["mem_bytes"] = values["mem"] * self.page_size
                for key, value in values.items():
                    yield gauge(f"sockstat_{protocol}_{key}", f"Number of {protocol} sockets in state {key}.",
                                float(value), namespace=NODE)
