"""Exporter values agree with the kernel's own files, read in the same test."""

from __future__ import annotations

import os
from pathlib import Path

from support.exposition import value, values


def proc_stat_cpu_seconds() -> dict[tuple[str, str], float]:
    hz = os.sysconf("SC_CLK_TCK")
    modes = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and not line.startswith("cpu "):
            fields = line.split()
            for mode, v in zip(modes, fields[1:], strict=False):
                out[(fields[0][3:], mode)] = int(v) / hz
    return out


def test_cpu_seconds_match_proc_stat(start_exporter) -> None:
    exporter = start_exporter()
    before = proc_stat_cpu_seconds()
    text = exporter.scrape()
    after = proc_stat_cpu_seconds()
    exported = values(text, "perfwatch_cpu_seconds_total")
    assert len(exported) == len(before) == os.cpu_count() * 8
    for (cpu, mode), low in before.items():
        got = exported[frozenset({("cpu", cpu), ("mode", mode)})]
        # Between the two reads the kernel moves on; allow that plus one tick either side.
        assert low - 0.011 <= got <= after[(cpu, mode)] + 0.011, (cpu, mode, low, got)


def test_memtotal_exact(start_exporter) -> None:
    text = start_exporter().scrape()
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    assert value(text, "perfwatch_memory_total_bytes") == int(meminfo["MemTotal"].split()[0]) * 1024
    swap_total = int(meminfo["SwapTotal"].split()[0]) * 1024
    assert value(text, "perfwatch_swap_total_bytes") == swap_total
