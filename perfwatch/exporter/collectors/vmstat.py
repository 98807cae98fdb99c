"""Paging activity, swapping and OOM kills, from /proc/vmstat (node_vmstat_<field>, untyped)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from perfwatch.common.config import Regex
from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import Collector, Matches, parsing, read_text, register, untyped


@dataclasses.dataclass
class VmstatOptions:
    fields: Regex = dataclasses.field(default=Regex(r"(oom_kill|pgpg|pswp|pg.*fault).*"), metadata={
        "help": "/proc/vmstat fields reported (anchored regex). The default, node_exporter's: page "
                "faults, pages paged in/out (pgpgin/pgpgout, in KiB), swapped in/out, OOM kills."})


@register
class VmstatCollector(Collector[VmstatOptions]):
    name = "vmstat"
    description = "Page faults, paging and swapping, OOM kills: /proc/vmstat fields as node_vmstat_<field>."
    node_collectors = ("vmstat",)

    def setup(self) -> None:
        self.selected = Matches(self.options.fields.compiled)

    def collect(self) -> Iterator[Metric]:
        # Untyped and raw, as node_exporter exposes them: its users' queries see the same.
        path = self.paths.proc("vmstat")
        with parsing(path):
            for line in read_text(path).splitlines():
                key, _, value = line.partition(" ")
                if self.selected[key]:
                    yield untyped(f"vmstat_{key}", f"/proc/vmstat information field {key}.", float(value))
