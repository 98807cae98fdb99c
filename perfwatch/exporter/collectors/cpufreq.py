"""CPU frequency per CPU, from sysfs cpufreq (absent in most VMs: then nothing is emitted)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, gauge, read_text, register

# Metric → (help, files to try in order). Values are kHz. scaling_cur_freq is readable by every
# user; cpuinfo_cur_freq (the hardware's own reading) is root-only and missing on many drivers.
FILES = {
    "cpu_frequency_hertz": ("Current frequency of the CPU.", ("scaling_cur_freq", "cpuinfo_cur_freq")),
    "cpu_frequency_min_hertz": ("Lowest frequency the CPU supports.", ("cpuinfo_min_freq",)),
    "cpu_frequency_max_hertz": ("Highest frequency the CPU supports.", ("cpuinfo_max_freq",)),
}


def read_khz(directory: str, names: tuple[str, ...]) -> float | None:
    for name in names:
        try:
            return int(read_text(os.path.join(directory, name))) * 1000.0
        except (FileNotFoundError, PermissionError, ValueError):
            continue
    return None


@register
class CPUFreqCollector(Collector[NoOptions]):
    name = "cpufreq"
    description = "Current, minimum and maximum frequency per CPU (sysfs cpufreq; nothing where absent)."

    def collect(self) -> Iterator[Metric]:
        base = self.paths.sys("devices", "system", "cpu")
        try:
            cpus = sorted(int(e[3:]) for e in os.listdir(base) if e.startswith("cpu") and e[3:].isdigit())
        except FileNotFoundError:
            return
        families = {name: gauge(name, doc, labels=["cpu"]) for name, (doc, _) in FILES.items()}
        for cpu in cpus:
            directory = os.path.join(base, f"cpu{cpu}", "cpufreq")
            if not os.path.isdir(directory):
                continue
            for name, (_, files) in FILES.items():
                value = read_khz(directory, files)
                if value is not None:
                    families[name].add_metric([str(cpu)], value)
        for family in families.values():
            if family.samples:
                yield family
