"""Memory, huge pages and swap: every field of /proc/meminfo, as node_exporter's meminfo collector."""

from __future__ import annotations

import re
from collections.abc import Iterator

from perfwatch.common.families import GaugeMetricFamily, Metric
from perfwatch.exporter.collectors.base import NODE, Collector, Memo, NoOptions, parsing, read_text, register

_PARENS = re.compile(r"\((.*)\)")


# A meminfo key with its colon ("Active(anon):") → the metric's suffix ("Active_anon"), made once
# per key: the kernel writes the same fifty-odd keys at every scrape, and the regex was most of
# the parse's time.
_suffixes: Memo[str, str] = Memo(lambda key: _PARENS.sub(r"_\1", key[:-1]), limit=1000)


def parse_meminfo(text: str) -> dict[str, float]:
    """`Key: value [kB]` lines → node_exporter's metric suffixes: `Active(anon)` → `Active_anon`,
    fields in kB → bytes with `_bytes` appended, plain counts (HugePages_*) as they are."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        key = _suffixes[parts[0]]
        if len(parts) == 3:  # has a unit: always kB
            out[key + "_bytes"] = float(parts[1]) * 1024
        elif len(parts) == 2:
            out[key] = float(parts[1])
        else:
            raise ValueError(f"invalid line {line!r}")
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
            yield GaugeMetricFamily(f"{NODE}_memory_{key}", f"Memory information field {key}.", value)
