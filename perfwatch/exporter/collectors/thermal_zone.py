"""Thermal zones and cooling devices, from /sys/class/thermal (node_exporter's thermal_zone collector).

thermal_zoneN/{type,policy,temp} (millidegrees Celsius) → node_thermal_zone_temp{zone="N",type};
cooling_deviceN/{type,cur_state,max_state} → node_cooling_device_{cur,max}_state{name="N",type}.
A zone whose mode is "disabled", or whose files cannot be read (drivers answer EAGAIN, ENODATA,
EIO), is skipped, as procfs does; an unreadable cooling device fails the collector, as there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, read_text, register

_ZONE = re.compile(r"thermal_zone[0-9]")
_COOLING = re.compile(r"cooling_device[0-9]")


def _entries(directory: str, pattern: re.Pattern[str]) -> list[str]:
    try:
        return sorted(name for name in os.listdir(directory) if pattern.match(name))
    except FileNotFoundError:
        return []


def _read(path: str) -> str:
    return read_text(path).strip()


@register
class ThermalZoneCollector(Collector[NoOptions]):
    name = "thermal_zone"
    description = "Thermal zone temperatures and cooling device states (/sys/class/thermal)."
    node_collectors = ("thermal_zone",)

    def collect(self) -> Iterator[Metric]:
        directory = self.paths.sys("class", "thermal")
        temp = gauge("thermal_zone_temp", "Zone temperature in Celsius", labels=["zone", "type"], namespace=NODE)
        for entry in _entries(directory, _ZONE):
            zone = os.path.join(directory, entry)
            try:
                try:
                    if _read(os.path.join(zone, "mode")) == "disabled":
                        continue
                except (FileNotFoundError, PermissionError):
                    pass
                kind = _read(os.path.join(zone, "type"))
                _read(os.path.join(zone, "policy"))  # required by procfs: a zone without it is skipped
                millidegrees = int(_read(os.path.join(zone, "temp")))
            except OSError:
                continue
            temp.add_metric([entry.removeprefix("thermal_zone"), kind], millidegrees / 1000.0)
        if temp.samples:  # node_exporter writes no HELP/TYPE for a family without samples
            yield temp
        cur = gauge("cooling_device_cur_state", "Current throttle state of the cooling device",
                    labels=["name", "type"], namespace=NODE)
        top = gauge("cooling_device_max_state", "Maximum throttle state of the cooling device",
                    labels=["name", "type"], namespace=NODE)
        for entry in _entries(directory, _COOLING):
            device = os.path.join(directory, entry)
            labels = [entry.removeprefix("cooling_device"), _read(os.path.join(device, "type"))]
            top.add_metric(labels, float(int(_read(os.path.join(device, "max_state")))))
            # cur_state may be -1 on some drivers (a signed read in procfs)
            cur.add_metric(labels, float(int(_read(os.path.join(device, "cur_state")))))
        yield from (family for family in (cur, top) if family.samples)
