"""Memory, huge pages and swap: every field of /proc/meminfo, as node_exporter's meminfo collector."""

from __future__ import annotations

import re
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, parsing, read_text, register

_PARENS = re.compile(r"\((.*)\)")


def parse_meminfo(text: str) -> dict[str, float]:
    """`Key: value [kB]` lines → node_exporter's metric suffixes: `Active(anon)` → `Active_anon`,
    fields in kB → bytes with `_bytes` appended, plain counts (HugePages_*) as they are."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        key = _PARENS.sub(r"_\1", parts[0][:-1])  # drop the ':'
        value = float(parts[1])
        if len(parts) == 3:  # has a unit: always kB
            value *= 1024
            key += "_bytes"
        elif len(parts) != 2:
            raise ValueError(f"invalid line {line!r}")
        out[key] = value
    return out


@register
class MeminfoCollector(Collector[NoOptions]):
    name = "meminfo"
    description = "Every /proc/meminfo field: memory, page cache, slab, huge pages, swap (node_memory_*)."
    node_collectors = ("meminfo",)

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("meminfo")
        with parsing(path):
            fields = parse_meminfo(read_text(path))
        for key, value in fields.items():
            yield gauge(f"memory_{key}", f"Memory information field {key}.", value, namespace=NODE)
