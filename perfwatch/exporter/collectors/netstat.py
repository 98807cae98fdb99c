"""Network protocol statistics from /proc/net/netstat, /proc/net/snmp and /proc/net/snmp6, as
node_exporter's netstat collector exposes them: node_netstat_<Protocol>_<Field>, untyped, only the
fields its default `--collector.netstat.fields` regex selects (option `fields`).

netstat and snmp are pairs of lines ("TcpExt: name name ...", "TcpExt: value value ...");
snmp6 is one "Ip6InOctets value" per line, the protocol being the name up to its first "6".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from perfwatch.common.config import Regex
from perfwatch.common.families import Metric, UnknownMetricFamily
from perfwatch.exporter.collectors.base import NODE, Collector, Memo, parsing, read_text, register

# node_exporter 1.5's default, unchanged in later releases.
DEFAULT_FIELDS = (r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)"
                  r"|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)"
                  r"|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)"
                  r"|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$")


@dataclasses.dataclass
class NetstatOptions:
    fields: Regex = dataclasses.field(default=Regex(DEFAULT_FIELDS), metadata={
        "help": "Which <Protocol>_<Field> to expose (node_exporter's --collector.netstat.fields default)."})


# A field: its protocol and name ("TcpExt", "ListenDrops"), or None where `fields` leaves it out.
Field = tuple[str, str] | None
# A names line's values: how many there are, and the index and field of each selected one.
Selected = tuple[int, list[tuple[int, tuple[str, str]]]]


def parse_pairs(text: str, fields_of: dict[str, Selected], found: dict[tuple[str, str], str]) -> None:
    """The selected values of a netstat or snmp text into `found`. `fields_of` maps a names line
    to its selected fields: the kernel writes the same names lines at every scrape, so each is
    split and matched against the regex once (`fields_of` is filled by the caller's `select`),
    and a values line's hundred-odd values are not looked at one by one."""
    lines = text.splitlines()
    for names_line, values_line in zip(lines[::2], lines[1::2], strict=False):
        count, selected = fields_of[names_line]
        values = values_line.split(" ")
        if len(values) != count:
            raise ValueError(f"field count mismatch for {values[0][:-1]}")
        for index, field in selected:
            found[field] = values[index]


def parse_snmp6(text: str, field_of: dict[str, Field], found: dict[tuple[str, str], str]) -> None:
    """The selected values of an snmp6 text ("Ip6InOctets value" lines) into `found`."""
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        field = field_of[parts[0]]
        if field is not None:
            found[field] = parts[1].strip()


class _Selection(dict[str, Selected]):
    """names line → its count of values and its fields the regex selects; computed on first sight."""

    def __init__(self, select: Callable[[str], bool]) -> None:
        super().__init__()
        self.select = select

    def __missing__(self, names_line: str) -> Selected:
        names = names_line.split(" ")
        protocol = names[0][:-1]  # "TcpExt:"; the values line starts with the protocol too
        selected = [(i, (protocol, name)) for i, name in enumerate(names) if i and self.select(f"{protocol}_{name}")]
        if len(self) >= 1000:  # bounded: a kernel has a dozen names lines
            self.clear()
        self[names_line] = (len(names), selected)
        return self[names_line]


class _Snmp6Selection(dict[str, Field]):
    """snmp6 name ("Ip6InOctets") → its protocol and field ("Ip6", "InOctets"), or None."""

    def __init__(self, select: Callable[[str], bool]) -> None:
        super().__init__()
        self.select = select

    def __missing__(self, name: str) -> Field:
        six = name.find("6")
        field = (name[:six + 1], name[six + 1:]) if six >= 0 and name[six + 1:] else None
        if field is not None and not self.select(f"{field[0]}_{field[1]}"):
            field = None
        if len(self) >= 10_000:
            self.clear()
        self[name] = field
        return field


def _texts(key: tuple[str, str]) -> tuple[str, str]:
    """(protocol, field) → its metric's name and help (untyped, as node_exporter)."""
    protocol, field = key
    return f"{NODE}_netstat_{protocol}_{field}", f"Statistic {protocol}{field}."


@register
class NetstatCollector(Collector[NetstatOptions]):
    name = "netstat"
    description = "TCP/UDP/ICMP/IP protocol counters: retransmits, listen drops, SYN cookies, errors (/proc/net)."
    node_collectors = ("netstat",)

    def setup(self) -> None:
        # node_exporter's regex is not anchored by itself (its default carries ^...$); Regex anchors.
        fields = self.options.fields.compiled

        def select(key: str) -> bool:
            return fields.match(key) is not None

        self.pairs = _Selection(select)
        self.snmp6 = _Snmp6Selection(select)
        self.texts = Memo(_texts)  # made once per field

    def collect(self) -> Iterator[Metric]:
        found: dict[tuple[str, str], str] = {}
        for filename in ("netstat", "snmp"):
            path = self.paths.proc("net", filename)
            with parsing(path):
                parse_pairs(read_text(path), self.pairs, found)
        path = self.paths.proc("net", "snmp6")
        try:
            text = read_text(path)
        except FileNotFoundError:  # IPv6 disabled
            text = ""
        with parsing(path):
            parse_snmp6(text, self.snmp6, found)
            for key, value in sorted(found.items()):
                name, documentation = self.texts[key]
                yield UnknownMetricFamily(name, documentation, float(value))
