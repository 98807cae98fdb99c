"""CPU frequency per CPU, from sysfs cpufreq (absent in most VMs: then nothing is emitted)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, read_text, register

# node_exporter's metric → (help, file). Values are kHz. cpuinfo_cur_freq (the hardware's own
# reading) is root-only and missing on many drivers; scaling_cur_freq is the governor's view.
FILES = (
    ("cpu_frequency_hertz", "Current CPU thread frequency in hertz.", "cpuinfo_cur_freq"),
    ("cpu_frequency_max_hertz", "Maximum CPU thread frequency in hertz.", "cpuinfo_max_freq"),
    ("cpu_frequency_min_hertz", "Minimum CPU thread frequency in hertz.", "cpuinfo_min_freq"),
    ("cpu_scaling_frequency_hertz", "Current scaled CPU thread frequency in hertz.", "scaling_cur_freq"),
    ("cpu_scaling_frequency_max_hertz", "Maximum scaled CPU thread frequency in hertz.", "scaling_max_freq"),
    ("cpu_scaling_frequency_min_hertz", "Minimum scaled CPU thread frequency in hertz.", "scaling_min_freq"),
)


def read_khz(path: str) -> float | None:
    try:
        return int(read_text(path)) * 1000.0
    except (OSError, ValueError):
        return None


def read_words(path: str) -> list[str]:
    try:
        return read_text(path).split()
    except OSError:
        return []


@register
class CPUFreqCollector(Collector[NoOptions]):
    name = "cpufreq"
    description = "Frequency per CPU (current, min, max; hardware and scaling) and governor; nothing where absent."
    node_collectors = ("cpufreq",)

    def collect(self) -> Iterator[Metric]:
        base = self.paths.sys("devices", "system", "cpu")
        try:
            cpus = sorted(int(e[3:]) for e in os.listdir(base) if e.startswith("cpu") and e[3:].isdigit())
        except FileNotFoundError:
            return
        families = {name: gauge(name, doc, labels=["cpu"], namespace=NODE) for name, doc, _ in FILES}
        governor = gauge("cpu_scaling_governor", "Current enabled CPU frequency governor.",
                         labels=["cpu", "governor"], namespace=NODE)
        for cpu in cpus:
            directory = os.path.join(base, f"cpu{cpu}", "cpufreq")
            if not os.path.isdir(directory):
                continue
            for name, _, file in FILES:
                value = read_khz(os.path.join(directory, file))
                if value is not None:
                    families[name].add_metric([str(cpu)], value)
            current = read_words(os.path.join(directory, "scaling_governor"))
            for available in read_words(os.path.join(directory, "scaling_available_governors")):
                governor.add_metric([str(cpu), available], 1.0 if current and available == current[0] else 0.0)
        for family in (*families.values(), governor):
            if family.samples:
                yield family
