"""Hardware sensors from the kernel's hwmon drivers (/sys/class/hwmon), named as node_exporter's
hwmon collector names them: node_hwmon_<type>_<property>_<unit>{chip,sensor}.

psutil.sensors_temperatures()/sensors_fans() read the same files but only at the fixed path
/sys/class/hwmon; reading them here honours `sysfs:` (a container's /host/sys) and is testable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from perfwatch.common.families import CounterMetricFamily, GaugeMetricFamily, Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, counter, gauge, read_text, register

_INVALID = re.compile(r"[^a-z0-9:_]")
_FILENAME = re.compile(r"^(?P<type>[^0-9]+)(?P<id>[0-9]*)?(_(?P<property>.+))?$")
SENSOR_TYPES = frozenset({"vrm", "beep_enable", "update_interval", "in", "cpu", "fan", "pwm", "temp", "curr",
                          "power", "energy", "humidity", "intrusion"})


def clean(name: str) -> str:
    return _INVALID.sub("_", name.lower()).strip("_")


def explode(filename: str) -> tuple[str, int, str] | None:
    """temp1_input → ("temp", 1, "input"); fan2 → ("fan", 2, ""); None for what is no sensor file."""
    match = _FILENAME.match(filename)
    if not match:
        return None
    return match["type"], int(match["id"] or 0), match["property"] or ""


def read_value(path: str) -> str | None:
    try:
        return read_text(path).strip("\n")
    except OSError:  # drivers fail with EIO, ENODATA, ...; write-only files: EACCES
        return None


def sensor_data(directory: str, data: dict[str, dict[str, str]]) -> None:
    try:
        files = os.listdir(directory)
    except OSError:
        return
    for filename in files:
        parts = explode(filename)
        if parts is None or parts[0] not in SENSOR_TYPES:
            continue
        value = read_value(os.path.join(directory, filename))
        if value is not None:
            data.setdefault(f"{parts[0]}{parts[1]}", {})[parts[2]] = value


def chip_name(directory: str) -> str | None:
    """node_exporter's `chip` label: <device type>_<device name> from the device link (e.g.
    platform_coretemp_0, pci0000:00_0000:00:18_3), else the driver's name, else the directory's."""
    device = os.path.join(directory, "device")
    if os.path.exists(device):
        real = os.path.realpath(device)
        prefix, name = os.path.split(real)
        kind = clean(os.path.basename(prefix.rstrip("/")))
        name = clean(name)
        if kind and name:
            return f"{kind}_{name}"
        if name:
            return name
    raw = read_value(os.path.join(directory, "name"))
    if raw and clean(raw):
        return clean(raw)
    return clean(os.path.basename(os.path.realpath(directory))) or None


class _Families:
    """Families created as sensors are found, each once per scrape."""

    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        self.seen: set[tuple[str, tuple[str, ...]]] = set()

    def add(self, name: str, doc: str, labels: list[str], values: list[str], value: float, *,
            is_counter: bool = False) -> None:
        # Two chips without a device link and with the same driver name get the same `chip` (a
        # sysfs node_exporter would fail the scrape on): keep the first, never a duplicate series.
        if (name, tuple(values)) in self.seen:
            return
        self.seen.add((name, tuple(values)))
        family = self.families.get(name)
        if family is None:
            bare = name[len(NODE) + 1:]
            family = (counter(bare, doc, labels=labels, namespace=NODE) if is_counter
                      else gauge(bare, doc, labels=labels, namespace=NODE))
            self.families[name] = family
        family.add_metric(values, value)


@register
class HwmonCollector(Collector[NoOptions]):
    name = "hwmon"
    description = "hwmon sensors (temperatures, fans, voltages, power, ...), where there are any."
    node_collectors = ("hwmon",)

    def collect(self) -> Iterator[Metric]:
        base = self.paths.sys("class", "hwmon")
        try:
            entries = sorted(os.listdir(base))
        except FileNotFoundError:
            return
        out = _Families()
        for entry in entries:
            directory = os.path.join(base, entry)
            if os.path.isdir(directory):
                self.chip(directory, out)
        yield from out.families.values()

    @staticmethod
    def chip(directory: str, out: _Families) -> None:  # node_exporter's cases, one by one
        chip = chip_name(directory)
        if chip is None:
            return
        data: dict[str, dict[str, str]] = {}
        sensor_data(directory, data)
        if os.path.exists(os.path.join(directory, "device")):  # older drivers: attributes under device/
            sensor_data(os.path.join(directory, "device"), data)
        raw_name = read_value(os.path.join(directory, "name"))
        if raw_name and clean(raw_name):
            out.add("node_hwmon_chip_names", "Annotation metric for human-readable chip names",
                    ["chip", "chip_name"], [chip, clean(raw_name)], 1.0)
        labels = ["chip", "sensor"]
        for sensor, properties in data.items():
            parts = explode(sensor)
            assert parts is not None
            kind = parts[0]
            values = [chip, sensor]
            if "label" in properties:
                out.add("node_hwmon_sensor_label", "Label for given chip and sensor", ["chip", "sensor", "label"],
                        [chip, sensor, properties["label"]], 1.0)
            if kind == "beep_enable":
                out.add("node_hwmon_beep_enabled", "Hardware beep enabled", labels, values,
                        1.0 if properties.get("") == "1" else 0.0)
                continue
            if kind in ("vrm", "update_interval"):
                try:
                    number = float(properties.get("", ""))
                except ValueError:
                    continue
                if kind == "vrm":
                    out.add("node_hwmon_voltage_regulator_version", "Hardware voltage regulator", labels, values,
                            number)
                else:
                    out.add("node_hwmon_update_interval_seconds", "Hardware monitor update interval", labels, values,
                            number * 0.001)
                continue
            prefix = f"node_hwmon_{kind}"
            for element, text in properties.items():
                if element == "label":
                    continue
                name = prefix
                if element == "input":
                    if "" in properties:
                        name += "_input"
                elif element:
                    name += "_" + clean(element)
                try:
                    number = float(text)
                except ValueError:
                    continue
                if element in ("fault", "alarm"):
                    out.add(name, f"Hardware sensor {element} status ({kind})", labels, values, number)
                elif element == "beep":
                    out.add(name + "_enabled", "Hardware monitor sensor has beeping enabled", labels, values, number)
                elif kind in ("in", "cpu"):
                    out.add(name + "_volts", f"Hardware monitor for voltage ({element})", labels, values,
                            number * 0.001)
                elif kind == "temp" and element != "type":
                    out.add(name + "_celsius", f"Hardware monitor for temperature ({element or 'input'})", labels,
                            values, number * 0.001)
                elif kind == "curr":
                    out.add(name + "_amps", f"Hardware monitor for current ({element})", labels, values, number * 0.001)
                elif kind == "energy":
                    out.add(name + "_joule_total", f"Hardware monitor for joules used so far ({element})", labels,
                            values, number / 1e6, is_counter=True)
                elif kind == "power" and element == "accuracy":
                    out.add(name, "Hardware monitor power meter accuracy, as a ratio", labels, values, number / 1e6)
                elif kind == "power" and element.startswith("average_interval"):
                    out.add(name + "_seconds", f"Hardware monitor power usage update interval ({element})", labels,
                            values, number * 0.001)
                elif kind == "power":
                    out.add(name + "_watt", f"Hardware monitor for power usage in watts ({element})", labels, values,
                            number / 1e6)
                elif kind == "humidity":
                    out.add(name, f"Hardware monitor for humidity, as a ratio ({element})", labels, values,
                            number / 1e6)
                elif kind == "fan" and element in ("input", "min", "max", "target"):
                    out.add(name + "_rpm", f"Hardware monitor for fan revolutions per minute ({element})", labels,
                            values, number)
                else:
                    out.add(name, f"Hardware monitor {kind} element {element}", labels, values, number)
