"""Memory, huge pages and swap, from /proc/meminfo and /proc/vmstat."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, counter, gauge, parsing, read_text, register

# /proc/meminfo field → (metric suffix, help). Values there are kB unless noted.
MEMINFO_BYTES = {
    "MemTotal": ("total", "Total usable memory."),
    "MemFree": ("free", "Memory not used for anything."),
    "MemAvailable": ("available", "Memory available for new work without swapping (kernel estimate)."),
    "Buffers": ("buffers", "Memory in block-device buffers."),
    "Cached": ("cached", "Memory in the page cache (excluding swap cache)."),
    "SwapCached": ("swap_cached", "Swapped-out memory that is also still in memory."),
    "Active": ("active", "Memory used recently."),
    "Inactive": ("inactive", "Memory not used recently, first to be reclaimed."),
    "Dirty": ("dirty", "Memory waiting to be written back to disk."),
    "Writeback": ("writeback", "Memory being written back to disk."),
    "AnonPages": ("anon", "Memory in anonymous pages mapped into user space."),
    "Mapped": ("mapped", "Memory in files mapped into user space."),
    "Shmem": ("shared", "Memory in shared memory and tmpfs."),
    "Slab": ("slab", "Memory in kernel slab caches."),
    "SReclaimable": ("slab_reclaimable", "Slab memory that can be reclaimed."),
    "KernelStack": ("kernel_stack", "Memory in kernel stacks."),
    "PageTables": ("page_tables", "Memory in page tables."),
    "CommitLimit": ("commit_limit", "Memory that can be committed under the overcommit policy."),
    "Committed_AS": ("committed", "Memory committed to processes (may exceed total)."),
    "Hugetlb": ("hugetlb", "Memory in huge pages of every size."),
}
HUGEPAGES = {
    "HugePages_Total": ("pool", "Huge pages in the pool (HugePages_Total)."),
    "HugePages_Free": ("free", "Huge pages in the pool not yet allocated."),
    "HugePages_Rsvd": ("reserved", "Huge pages reserved but not yet allocated."),
    "HugePages_Surp": ("surplus", "Huge pages above the configured pool size."),
}


def parse_meminfo(text: str) -> dict[str, int]:
    """`Key: value [kB]` lines → bytes (kB scaled) or plain counts."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


@register
class MemoryCollector(Collector[NoOptions]):
    name = "memory"
    description = "Memory (total, available, used, cached, buffers, shared, ...), huge pages and swap."

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("meminfo")
        with parsing(path):
            mem = parse_meminfo(read_text(path))
        for key, (suffix, doc) in MEMINFO_BYTES.items():
            if key in mem:
                yield gauge(f"memory_{suffix}_bytes", doc, mem[key])
        if "MemTotal" in mem and "MemAvailable" in mem:
            yield gauge("memory_used_bytes", "Memory in use: total minus available.",
                        mem["MemTotal"] - mem["MemAvailable"])
        for key, (suffix, doc) in HUGEPAGES.items():
            if key in mem:
                yield gauge(f"memory_hugepages_{suffix}", doc, mem[key])
        if "Hugepagesize" in mem:
            yield gauge("memory_hugepage_size_bytes", "Size of a default huge page.", mem["Hugepagesize"])

        if "SwapTotal" in mem:
            yield gauge("swap_total_bytes", "Total swap space.", mem["SwapTotal"])
            yield gauge("swap_free_bytes", "Unused swap space.", mem["SwapFree"])
            yield gauge("swap_used_bytes", "Used swap space.", mem["SwapTotal"] - mem["SwapFree"])
        path = self.paths.proc("vmstat")
        with parsing(path):
            vmstat = dict(line.split() for line in read_text(path).splitlines())
        page_size = os.sysconf("SC_PAGE_SIZE")  # pswpin/pswpout count base pages
        for key, direction in (("pswpin", "in"), ("pswpout", "out")):
            if key in vmstat:
                yield counter(f"swap_{direction}_bytes_total", f"Bytes swapped {direction}.",
                              int(vmstat[key]) * page_size)
