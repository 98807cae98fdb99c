"""Host identity as an info metric: hostname, kernel, OS, architecture, CPU model."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator

from prometheus_client.core import Metric

from perfwatch.exporter.collectors.base import Collector, NoOptions, info, read_text, register


def os_release(text: str) -> dict[str, str]:
    """KEY=value lines of os-release(5); values may be shell-quoted."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value]
            out[key.strip()] = words[0] if words else ""
    return out


def cpu_model_and_count(cpuinfo: str) -> tuple[str, int]:
    model, count = "", 0
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            count += 1
        elif key in ("model name", "Model", "cpu model") and not model:  # x86, arm, others
            model = value.strip()
    return model, count


@register
class HostCollector(Collector[NoOptions]):
    name = "host"
    description = "perfwatch_host_info: hostname, kernel, OS, architecture, CPU model and count."

    info_labels: dict[str, str] | None = None

    def collect(self) -> Iterator[Metric]:
        # Everything here changes only with a reboot or a kernel/OS upgrade (which restart the
        # exporter), so it is read once, not at every scrape. A renamed host shows after a restart.
        if self.info_labels is None:
            self.info_labels = self.read()
        yield info("host", "The host's identity; the value is always 1.", self.info_labels)

    def read(self) -> dict[str, str]:
        kernel = self.paths.proc("sys", "kernel")
        release = {}
        for candidate in ("etc/os-release", "usr/lib/os-release"):
            try:
                release = os_release(read_text(os.path.join(self.paths.rootfs, candidate)))
                break
            except FileNotFoundError:
                continue
        model, count = cpu_model_and_count(read_text(self.paths.proc("cpuinfo")))
        return {
            "hostname": read_text(os.path.join(kernel, "hostname")).strip(),
            "kernel_release": read_text(os.path.join(kernel, "osrelease")).strip(),
            "kernel_version": read_text(os.path.join(kernel, "version")).strip(),
            "os_id": release.get("ID", ""),
            "os_version": release.get("VERSION_ID", ""),
            "architecture": os.uname().machine,
            "cpu_model": model,
            "cpu_count": str(count or os.cpu_count() or 0),
        }
