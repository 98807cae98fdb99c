"""Disk I/O per block device, from /proc/diskstats, with udev's device properties
(node_exporter's diskstats collector)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

from perfwatch.common.config import Regex
from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, counter, gauge, parsing, read_text, register

SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's sector size
COUNT, SECTORS, MS, RAW = "count", "sectors", "ms", "raw"

# Column (0-based, after major, minor, name) → (node_exporter's metric, help, unit). Columns
# 11+ (discards, kernel 4.18) and 15+ (flushes, 5.5) exist only on newer kernels: emitted where
# present. Discards stay in sectors, as node_exporter has them (node_disk_discarded_sectors_total).
COUNTERS = (
    (0, "disk_reads_completed_total", "The total number of reads completed successfully.", COUNT),
    (1, "disk_reads_merged_total", "The total number of reads merged.", COUNT),
    (2, "disk_read_bytes_total", "The total number of bytes read successfully.", SECTORS),
    (3, "disk_read_time_seconds_total", "The total number of seconds spent by all reads.", MS),
    (4, "disk_writes_completed_total", "The total number of writes completed successfully.", COUNT),
    (5, "disk_writes_merged_total", "The number of writes merged.", COUNT),
    (6, "disk_written_bytes_total", "The total number of bytes written successfully.", SECTORS),
    (7, "disk_write_time_seconds_total", "This is the total number of seconds spent by all writes.", MS),
    (9, "disk_io_time_seconds_total", "Total seconds spent doing I/Os.", MS),
    (10, "disk_io_time_weighted_seconds_total", "The weighted # of seconds spent doing I/Os.", MS),
    (11, "disk_discards_completed_total", "The total number of discards completed successfully.", COUNT),
    (12, "disk_discards_merged_total", "The total number of discards merged.", COUNT),
    (13, "disk_discarded_sectors_total", "The total number of sectors discarded successfully.", RAW),
    (14, "disk_discard_time_seconds_total", "This is the total number of seconds spent by all discards.", MS),
    (15, "disk_flush_requests_total", "The total number of flush requests completed successfully", COUNT),
    (16, "disk_flush_requests_time_seconds_total", "This is the total number of seconds spent by all flush requests.",
     MS),
)
IO_NOW = 8

# udev database properties (/run/udev/data/b<major>:<minor>, "E:KEY=value" lines) → labels.
INFO_LABELS = {"path": "ID_PATH", "wwn": "ID_WWN", "model": "ID_MODEL", "serial": "ID_SERIAL_SHORT",
               "revision": "ID_REVISION"}
FILESYSTEM_LABELS = {"type": "ID_FS_TYPE", "usage": "ID_FS_USAGE", "uuid": "ID_FS_UUID", "version": "ID_FS_VERSION"}
DM_LABELS = {"name": "DM_NAME", "uuid": "DM_UUID", "vg_name": "DM_VG_NAME", "lv_name": "DM_LV_NAME",
             "lv_layer": "DM_LV_LAYER"}
ATA = (("disk_ata_rotation_rate_rpm", "ID_ATA_ROTATION_RATE_RPM", "ATA disk rotation rate in RPMs (0 for SSDs)."),
       ("disk_ata_write_cache", "ID_ATA_WRITE_CACHE", "ATA disk has a write cache."),
       ("disk_ata_write_cache_enabled", "ID_ATA_WRITE_CACHE_ENABLED", "ATA disk has its write cache enabled."))


def to_base_unit(raw: int, unit: str) -> float:
    if unit == SECTORS:
        return float(raw * SECTOR)
    if unit == MS:
        return raw / 1000  # exact to the last digit, unlike raw * 0.001
    return float(raw)


def udev_properties(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("E:"):
            key, _, value = line[2:].partition("=")
            out[key] = value
    return out


@dataclasses.dataclass
class DiskstatsOptions:
    devices_exclude: Regex = dataclasses.field(
        default=Regex(r"(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+"),
        metadata={"help": "Devices not reported (anchored regex). The default, node_exporter's, hides "
                          "RAM disks, loop devices, floppies and partitions."})
    udev_data_path: str = dataclasses.field(default="run/udev/data", metadata={
        "help": "udev's database, under rootfs, for node_disk_info's model, serial, path, wwn, revision."})


@register
class DiskstatsCollector(Collector[DiskstatsOptions]):
    name = "diskstats"
    description = "Disk I/O per device: bytes, operations, merges, time spent, I/Os in progress, device info."
    node_collectors = ("diskstats",)

    def setup(self) -> None:
        self.exclude = self.options.devices_exclude.compiled
        self.udev = os.path.join(self.paths.rootfs, self.options.udev_data_path)

    def properties(self, major: str, minor: str) -> dict[str, str]:
        try:
            return udev_properties(read_text(os.path.join(self.udev, f"b{major}:{minor}")))
        except OSError:
            return {}

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("diskstats")
        rows = []
        with parsing(path):
            for line in read_text(path).splitlines():
                fields = line.split()
                if len(fields) >= 14 and not self.exclude.match(fields[2]):
                    rows.append((fields[0], fields[1], fields[2], [int(v) for v in fields[3:]]))
        info = gauge("disk_info", "Info of /sys/block/<block_device>.",
                     labels=["device", "major", "minor", *INFO_LABELS], namespace=NODE)
        fs_info = gauge("disk_filesystem_info", "Info about disk filesystem.",
                        labels=["device", *FILESYSTEM_LABELS], namespace=NODE)
        dm_info = gauge("disk_device_mapper_info", "Info about disk device mapper.",
                        labels=["device", *DM_LABELS], namespace=NODE)
        ata = {key: gauge(name, doc, labels=["device"], namespace=NODE) for name, key, doc in ATA}
        for major, minor, device, _ in rows:
            props = self.properties(major, minor)
            info.add_metric([device, major, minor, *(props.get(k, "") for k in INFO_LABELS.values())], 1.0)
            if props.get("ID_FS_TYPE"):
                fs_info.add_metric([device, *(props.get(k, "") for k in FILESYSTEM_LABELS.values())], 1.0)
            if props.get("DM_NAME"):
                dm_info.add_metric([device, *(props.get(k, "") for k in DM_LABELS.values())], 1.0)
            if props.get("ID_ATA"):
                for key, family in ata.items():
                    try:
                        family.add_metric([device], float(props[key]))
                    except (KeyError, ValueError):
                        continue
        for column, name, doc, unit in COUNTERS:
            totals = counter(name, doc, labels=["device"], namespace=NODE)
            for _, _, device, values in rows:
                if column < len(values):
                    totals.add_metric([device], to_base_unit(values[column], unit))
            if totals.samples:
                yield totals
        io_now = gauge("disk_io_now", "The number of I/Os currently in progress.", labels=["device"], namespace=NODE)
        for _, _, device, values in rows:
            io_now.add_metric([device], float(values[IO_NOW]))
        yield io_now
        for info_family in (info, fs_info, dm_info, *ata.values()):
            if info_family.samples:
                yield info_family
