"""CPU time per CPU and mode (/proc/stat), thermal throttling and isolated CPUs (sysfs), and, when
asked, each CPU's identity from /proc/cpuinfo: node_exporter's cpu collector."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

from perfwatch.common.config import Regex
from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, counter, gauge, parsing, read_text, register

# Column order of the `cpuN` lines in /proc/stat (proc(5)). guest and guest_nice are already
# counted inside user and nice, so they get a metric of their own instead of a mode.
MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
GUEST_MODES = ("user", "nice")

# node_cpu_info's labels and the /proc/cpuinfo keys they come from (as prometheus/procfs reads them:
# x86's names; other architectures leave most empty, and ARM calls its flags "Features").
INFO_LABELS = ("package", "core", "cpu", "vendor", "family", "model", "model_name", "microcode", "stepping",
               "cachesize")
INFO_KEYS = {"physical id": "package", "core id": "core", "processor": "cpu", "vendor_id": "vendor",
             "vendor": "vendor", "cpu family": "family", "model": "model", "model name": "model_name",
             "microcode": "microcode", "stepping": "stepping", "cache size": "cachesize"}


@dataclasses.dataclass
class CPUOptions:
    info: bool = dataclasses.field(default=False, metadata={
        "help": "Also expose node_cpu_info (vendor, family, model, microcode, ... per CPU, from /proc/cpuinfo), "
                "as node_exporter's --collector.cpu.info; off by default there too."})
    info_flags_include: Regex | None = dataclasses.field(default=None, metadata={
        "help": "Expose node_cpu_flag_info{flag} for the first CPU's flags matching this anchored regex "
                "(node_exporter's --collector.cpu.info.flags-include, which is unanchored: `.*avx.*` for "
                "its `avx`); setting it turns `info` on, as there."})
    info_bugs_include: Regex | None = dataclasses.field(default=None, metadata={
        "help": "The same for the first CPU's bugs: node_cpu_bug_info{bug} (--collector.cpu.info.bugs-include)."})


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo → one dict per processor: node_cpu_info's labels, plus `flags` and `bugs`.
    A value is what follows the first ": " of its line; a key with nothing after it is empty."""
    cpus: list[dict[str, str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            continue
        value = value[1:] if value.startswith(" ") else value
        if key == "processor":
            cpus.append(dict.fromkeys(INFO_LABELS, ""))
        if not cpus:
            continue
        if key in INFO_KEYS:
            cpus[-1][INFO_KEYS[key]] = value
        elif key in ("flags", "Features"):
            cpus[-1]["flags"] = value
        elif key == "bugs":
            cpus[-1]["bugs"] = value
    return cpus


def parse_cpu_list(text: str) -> list[int]:
    """A sysfs CPU list ("0-2,5") → [0, 1, 2, 5]."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def read_int(path: str) -> int | None:
    try:
        return int(read_text(path))
    except (OSError, ValueError):
        return None


@register
class CPUCollector(Collector[CPUOptions]):
    name = "cpu"
    description = "Seconds each CPU spent in each mode (user, system, idle, iowait, ...)."
    node_collectors = ("cpu",)

    def setup(self) -> None:
        self.ticks_per_second = float(os.sysconf("SC_CLK_TCK"))
        options = self.options
        self.flags_include = options.info_flags_include.compiled if options.info_flags_include is not None else None
        self.bugs_include = options.info_bugs_include.compiled if options.info_bugs_include is not None else None
        self.info = options.info or self.flags_include is not None or self.bugs_include is not None
        # CPU directory → (package, core, has thermal_throttle/): the topology changes only with
        # hotplug, so it is read again only when the set of CPUs changes.
        self.topology: dict[str, tuple[int, int, bool] | None] = {}

    def collect(self) -> Iterator[Metric]:
        seconds = counter("cpu_seconds_total", "Seconds the CPUs spent in each mode.",
                          labels=["cpu", "mode"], namespace=NODE)
        guest = counter("cpu_guest_seconds_total",
                        "Seconds the CPU spent running guests (also counted in user and nice).",
                        labels=["cpu", "mode"], namespace=NODE)
        hz = self.ticks_per_second
        path = self.paths.proc("stat")
        with parsing(path):
            for line in read_text(path).splitlines():
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                fields = line.split()
                cpu = fields[0][3:]
                values = fields[1:]
                for mode, value in zip(MODES, values, strict=False):
                    seconds.add_metric([cpu, mode], int(value) / hz)
                for mode, value in zip(GUEST_MODES, values[8:10], strict=False):
                    guest.add_metric([cpu, mode], int(value) / hz)
        yield seconds
        yield guest
        yield from self.throttles()
        yield from self.isolated()
        if self.info:
            yield from self.cpuinfo()

    def cpuinfo(self) -> Iterator[Metric]:
        """node_cpu_info per CPU; the first CPU's flags and bugs, filtered, as node_cpu_{flag,bug}_info."""
        path = self.paths.proc("cpuinfo")
        with parsing(path):
            cpus = parse_cpuinfo(read_text(path))
        info = gauge("cpu_info", "CPU information from /proc/cpuinfo.", labels=list(INFO_LABELS), namespace=NODE)
        for cpu in cpus:
            info.add_metric([cpu[label] for label in INFO_LABELS], 1.0)
        yield info
        for field, include, name, label in (("flags", self.flags_include, "flag", "flag"),
                                            ("bugs", self.bugs_include, "bug", "bug")):
            if include is None or not cpus:
                continue
            family = gauge(f"cpu_{name}_info", f"The `{field}` field of CPU information from /proc/cpuinfo "
                           "taken from the first core.", labels=[label], namespace=NODE)
            for value in cpus[0].get(field, "").split():
                if include.match(value):
                    family.add_metric([value], 1.0)
            yield family

    def throttles(self) -> Iterator[Metric]:
        """node_cpu_core_throttles_total{package,core}, node_cpu_package_throttles_total{package}:
        thermal_throttle/ counters (x86), each core and package read once."""
        base = self.paths.sys("devices", "system", "cpu")
        try:
            cpus = sorted(e for e in os.listdir(base) if e.startswith("cpu") and e[3:].isdigit())
        except FileNotFoundError:
            return
        if set(cpus) != set(self.topology):
            self.topology = {}
            for cpu in cpus:
                package = read_int(os.path.join(base, cpu, "topology", "physical_package_id"))
                core = read_int(os.path.join(base, cpu, "topology", "core_id"))
                throttle = os.path.isdir(os.path.join(base, cpu, "thermal_throttle"))
                self.topology[cpu] = None if package is None or core is None else (package, core, throttle)
        packages: dict[int, int] = {}
        cores: dict[tuple[int, int], int] = {}
        for cpu in cpus:
            known = self.topology.get(cpu)
            if known is None or not known[2]:
                continue
            package, core, _ = known
            directory = os.path.join(base, cpu, "thermal_throttle")
            if (package, core) not in cores:
                count = read_int(os.path.join(directory, "core_throttle_count"))
                if count is not None:
                    cores[(package, core)] = count
            if package not in packages:
                count = read_int(os.path.join(directory, "package_throttle_count"))
                if count is not None:
                    packages[package] = count
        if packages:
            family = counter("cpu_package_throttles_total", "Number of times this CPU package has been throttled.",
                             labels=["package"], namespace=NODE)
            for package, count in sorted(packages.items()):
                family.add_metric([str(package)], float(count))
            yield family
        if cores:
            core_family = counter("cpu_core_throttles_total", "Number of times this CPU core has been throttled.",
                                  labels=["package", "core"], namespace=NODE)
            for (package, core), count in sorted(cores.items()):
                core_family.add_metric([str(package), str(core)], float(count))
            yield core_family

    def isolated(self) -> Iterator[Metric]:
        try:
            text = read_text(self.paths.sys("devices", "system", "cpu", "isolated"))
        except OSError:
            return
        cpus = parse_cpu_list(text)
        if cpus:
            family = gauge("cpu_isolated", "Whether each core is isolated, information from "
                           "/sys/devices/system/cpu/isolated.", labels=["cpu"], namespace=NODE)
            for cpu in cpus:
                family.add_metric([str(cpu)], 1.0)
            yield family
