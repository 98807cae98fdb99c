"""Network protocol statistics from /proc/net/netstat, /proc/net/snmp and /proc/net/snmp6, as
node_exporter's netstat collector exposes them: node_netstat_<Protocol>_<Field>, untyped, only the
fields its default `--collector.netstat.fields` regex selects (option `fields`).

netstat and snmp are pairs of lines ("TcpExt: name name ...", "TcpExt: value value ...");
snmp6 is one "Ip6InOctets value" per line, the protocol being the name up to its first "6".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from perfwatch.common.config import Regex
from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import Collector, parsing, read_text, register, untyped

# node_exporter 1.5's default, unchanged in later releases.
DEFAULT_FIELDS = (r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)"
                  r"|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)"
                  r"|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)"
                  r"|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$")


@dataclasses.dataclass
class NetstatOptions:
    fields: Regex = dataclasses.field(default=Regex(DEFAULT_FIELDS), metadata={
        "help": "Which <Protocol>_<Field> to expose (node_exporter's --collector.netstat.fields default)."})


def parse_pairs(text: str, stats: dict[str, dict[str, str]]) -> None:
    lines = text.splitlines()
    for names_line, values_line in zip(lines[::2], lines[1::2], strict=False):
        names, values = names_line.split(" "), values_line.split(" ")
        protocol = names[0][:-1]  # "TcpExt:"
        if len(names) != len(values):
            raise ValueError(f"field count mismatch for {protocol}")
        stats[protocol] = dict(zip(names[1:], values[1:], strict=True))


def parse_snmp6(text: str, stats: dict[str, dict[str, str]]) -> None:
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        six = fields[0].find("6")
        if six >= 0:
            stats.setdefault(fields[0][:six + 1], {})[fields[0][six + 1:]] = fields[1]


@register
class NetstatCollector(Collector[NetstatOptions]):
    name = "netstat"
    description = "TCP/UDP/ICMP/IP protocol counters: retransmits, listen drops, SYN cookies, errors (/proc/net)."
    node_collectors = ("netstat",)

    def setup(self) -> None:
        # node_exporter's regex is not anchored by itself (its default carries ^...$); Regex anchors.
        self.fields = self.options.fields.compiled
        self.selected: dict[str, bool] = {}  # key → matches: the same few hundred keys at every scrape

    def collect(self) -> Iterator[Metric]:
        stats: dict[str, dict[str, str]] = {}
        for filename in ("netstat", "snmp"):
            path = self.paths.proc("net", filename)
            with parsing(path):
                parse_pairs(read_text(path), stats)
        path = self.paths.proc("net", "snmp6")
        try:
            text = read_text(path)
        except FileNotFoundError:  # IPv6 disabled
            text = ""
        with parsing(path):
            parse_snmp6(text, stats)
            for protocol, fields in sorted(stats.items()):
                for field, value in sorted(fields.items()):
                    key = f"{protocol}_{field}"
                    selected = self.selected.get(key)
                    if selected is None:
                        selected = self.selected[key] = self.fields.match(key) is not None
                    if selected:
                        yield untyped(f"netstat_{key}", f"Statistic {protocol}{field}.", float(value))
