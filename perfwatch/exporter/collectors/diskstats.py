"""Disk I/O per block device, from /proc/diskstats."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.common.config import Regex
from perfwatch.exporter.collectors.base import Collector, counter, gauge, parsing, read_text, register

SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's sector size
COUNT, SECTORS, MS = "count", "sectors", "ms"

# Column (0-based, after major, minor, name) → (metric, help, unit). Columns 11+ (discards,
# kernel 4.18) and 15+ (flushes, 5.5) exist only on newer kernels: emitted where present.
COUNTERS = (
    (0, "disk_reads_completed_total", "Reads completed.", COUNT),
    (1, "disk_reads_merged_total", "Adjacent reads merged into one.", COUNT),
    (2, "disk_read_bytes_total", "Bytes read.", SECTORS),
    (3, "disk_read_time_seconds_total", "Seconds spent by all reads.", MS),
    (4, "disk_writes_completed_total", "Writes completed.", COUNT),
    (5, "disk_writes_merged_total", "Adjacent writes merged into one.", COUNT),
    (6, "disk_written_bytes_total", "Bytes written.", SECTORS),
    (7, "disk_write_time_seconds_total", "Seconds spent by all writes.", MS),
    (9, "disk_io_time_seconds_total", "Seconds the device had I/O in progress (busy time).", MS),
    (10, "disk_io_time_weighted_seconds_total",
     "Seconds spent on I/O weighted by the number in progress (queue length integral).", MS),
    (11, "disk_discards_completed_total", "Discards completed.", COUNT),
    (12, "disk_discards_merged_total", "Adjacent discards merged into one.", COUNT),
    (13, "disk_discarded_bytes_total", "Bytes discarded.", SECTORS),
    (14, "disk_discard_time_seconds_total", "Seconds spent by all discards.", MS),
    (15, "disk_flushes_completed_total", "Flush requests completed.", COUNT),
    (16, "disk_flush_time_seconds_total", "Seconds spent by all flush requests.", MS),
)
IO_NOW = 8


def to_base_unit(raw: int, unit: str) -> float:
    if unit == SECTORS:
        return float(raw * SECTOR)
    if unit == MS:
        return raw / 1000  # exact to the last digit, unlike raw * 0.001
    return float(raw)


@dataclasses.dataclass
class DiskstatsOptions:
    devices_exclude: Regex = dataclasses.field(
        default=Regex(r"(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+"),
        metadata={"help": "Devices not reported (anchored regex). The default, node_exporter's, hides "
                          "RAM disks, loop devices, floppies and partitions."})


@register
class DiskstatsCollector(Collector[DiskstatsOptions]):
    name = "diskstats"
    description = "Disk I/O per device: bytes, operations, merges, time spent, I/Os in progress."

    def setup(self) -> None:
        self.exclude = self.options.devices_exclude.compiled

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("diskstats")
        rows = []
        with parsing(path):
            for line in read_text(path).splitlines():
                fields = line.split()
                if len(fields) >= 14 and not self.exclude.match(fields[2]):
                    rows.append((fields[2], [int(v) for v in fields[3:]]))
        for column, name, doc, unit in COUNTERS:
            family = counter(name, doc, labels=["device"])
            for device, values in rows:
                if column < len(values):
                    family.add_metric([device], to_base_unit(values[column], unit))
            if family.samples:
                yield family
        io_now = gauge("disk_io_now", "I/Os in progress right now.", labels=["device"])
        for device, values in rows:
            io_now.add_metric([device], float(values[IO_NOW]))
        yield io_now
