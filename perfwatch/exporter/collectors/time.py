"""The host's clock, time zone and clock sources (node_exporter's time collector)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, read_text, register


@register
class TimeCollector(Collector[NoOptions]):
    name = "time"
    description = "System time, time zone offset, and the kernel's clock sources."
    node_collectors = ("time",)

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        yield gauge("time_seconds", "System time in seconds since epoch (1970).", now, namespace=NODE)
        local = time.localtime(now)
        zone = gauge("time_zone_offset_seconds", "System time zone offset in seconds.", labels=["time_zone"],
                     namespace=NODE)
        zone.add_metric([local.tm_zone], float(local.tm_gmtoff))
        yield zone
        available = gauge("time_clocksource_available_info",
                          "Available clocksources read from '/sys/devices/system/clocksource'.",
                          labels=["device", "clocksource"], namespace=NODE)
        current = gauge("time_clocksource_current_info",
                        "Current clocksource read from '/sys/devices/system/clocksource'.",
                        labels=["device", "clocksource"], namespace=NODE)
        base = self.paths.sys("devices", "system", "clocksource")
        try:
            entries = sorted(e for e in os.listdir(base) if e.startswith("clocksource") and e[11:].isdigit())
        except FileNotFoundError:
            entries = []
        for entry in entries:
            directory = os.path.join(base, entry)
            try:
                sources = read_text(os.path.join(directory, "available_clocksource")).split()
                chosen = read_text(os.path.join(directory, "current_clocksource")).strip()
            except OSError:
                continue
            device = entry[len("clocksource"):]
            for source in sources:
                available.add_metric([device, source], 1.0)
            current.add_metric([device, chosen], 1.0)
        if available.samples:
            yield available
        if current.samples:
            yield current
