"""Temperatures and fan speeds from the kernel's hwmon drivers (/sys/class/hwmon).

psutil.sensors_temperatures()/sensors_fans() read the same files but only at the fixed path
/sys/class/hwmon; reading them here honours `sysfs:` (a container's /host/sys) and is testable.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, gauge, read_text, register


def read_number(path: str) -> float | None:
    """A sysfs attribute as a number; None when absent or unreadable (drivers fail with EIO, ENODATA...)."""
    try:
        return float(read_text(path).strip())
    except (OSError, ValueError):
        return None


def read_label(path: str) -> str | None:
    try:
        return read_text(path).strip() or None
    except OSError:
        return None


def chip_directories(base: str) -> list[tuple[str, str]]:
    """(chip name, directory holding its attributes) for every hwmon device, in a stable order."""
    try:
        entries = sorted(os.listdir(base), key=lambda e: (len(e), e))  # hwmon2 before hwmon10
    except FileNotFoundError:
        return []
    chips = []
    for entry in entries:
        directory = os.path.join(base, entry)
        # Older drivers keep their attributes in the device/ subdirectory.
        for candidate in (directory, os.path.join(directory, "device")):
            name = read_label(os.path.join(candidate, "name"))
            if name is not None:
                chips.append((name, candidate))
                break
    # Two sockets give two "coretemp" chips: number the repeats so every series stays unique.
    totals = Counter(name for name, _ in chips)
    seen: Counter[str] = Counter()
    out = []
    for name, directory in chips:
        if totals[name] > 1:
            seen[name] += 1
            name = f"{name}_{seen[name] - 1}"
        out.append((name, directory))
    return out


@register
class HwmonCollector(Collector[NoOptions]):
    name = "hwmon"
    description = "Temperatures (current, max, critical) and fan speeds of hwmon sensors, where there are any."

    def collect(self) -> Iterator[Metric]:
        labels = ["chip", "sensor"]
        temperature = gauge("hwmon_temperature_celsius", "Temperature the sensor reads.", labels=labels)
        temperature_max = gauge("hwmon_temperature_max_celsius", "Temperature the sensor's high limit is at.",
                                labels=labels)
        temperature_crit = gauge("hwmon_temperature_critical_celsius",
                                 "Temperature at which the hardware acts (throttles, shuts down).", labels=labels)
        fan = gauge("hwmon_fan_rpm", "Fan speed in revolutions per minute.", labels=labels)
        seen: set[tuple[bool, str, str]] = set()
        for chip, directory in chip_directories(self.paths.sys("class", "hwmon")):
            try:
                files = os.listdir(directory)
            except OSError:
                continue
            inputs = sorted(f for f in files if f.endswith("_input") and f.startswith(("temp", "fan")))
            for input_file in inputs:
                sensor_id = input_file[:-len("_input")]  # temp1, fan2
                value = read_number(os.path.join(directory, input_file))
                if value is None:
                    continue
                sensor = read_label(os.path.join(directory, f"{sensor_id}_label")) or sensor_id
                is_fan = sensor_id.startswith("fan")
                if (is_fan, chip, sensor) in seen:  # two inputs with one label: keep the series apart
                    sensor = sensor_id
                seen.add((is_fan, chip, sensor))
                if is_fan:
                    fan.add_metric([chip, sensor], value)
                    continue
                # Temperatures are in millidegrees Celsius.
                temperature.add_metric([chip, sensor], value / 1000)
                for suffix, family in (("max", temperature_max), ("crit", temperature_crit)):
                    limit = read_number(os.path.join(directory, f"{sensor_id}_{suffix}"))
                    if limit is not None:
                        family.add_metric([chip, sensor], limit / 1000)
        for family in (temperature, temperature_max, temperature_crit, fan):
            if family.samples:
                yield family
