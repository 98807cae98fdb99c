"""node_os_info and node_os_version, from os-release(5) (node_exporter's os collector)."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, read_text, register

# Label → os-release key, in node_exporter's label order.
INFO_LABELS = {
    "build_id": "BUILD_ID", "id": "ID", "id_like": "ID_LIKE", "image_id": "IMAGE_ID",
    "image_version": "IMAGE_VERSION", "name": "NAME", "pretty_name": "PRETTY_NAME",
    "variant": "VARIANT", "variant_id": "VARIANT_ID", "version": "VERSION",
    "version_codename": "VERSION_CODENAME", "version_id": "VERSION_ID",
}
CANDIDATES = ("etc/os-release", "usr/lib/os-release")
_MAJOR_MINOR = re.compile(r"^[0-9]+\.?[0-9]*")


def os_release(text: str) -> dict[str, str]:
    """KEY=value lines of os-release(5); values may be shell-quoted."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value]
            out[key.strip()] = " ".join(words)
    return out


def version_number(version_id: str) -> float:
    """node_os_version: the major.minor part of VERSION_ID ("22.04" → 22.04, "3.17.2" → 3.17), else 0."""
    match = _MAJOR_MINOR.match(version_id)
    return float(match.group(0)) if match else 0.0


@register
class OSCollector(Collector[NoOptions]):
    name = "os"
    description = "node_os_info and node_os_version from /etc/os-release (re-read when the file changes)."
    node_collectors = ("os",)

    _cached: tuple[str, float, dict[str, str]] | None = None

    def collect(self) -> Iterator[Metric]:
        release = self.read()
        if release is None:
            return
        info = gauge("os_info", "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, "
                     "image_version, name, pretty_name, variant, variant_id, version, version_codename, version_id.",
                     labels=list(INFO_LABELS), namespace=NODE)
        info.add_metric([release.get(key, "") for key in INFO_LABELS.values()], 1.0)
        yield info
        version = gauge("os_version", "Metric containing the major.minor part of the OS version.",
                        labels=["id", "id_like", "name"], namespace=NODE)
        version.add_metric([release.get("ID", ""), release.get("ID_LIKE", ""), release.get("NAME", "")],
                           version_number(release.get("VERSION_ID", "")))
        yield version

    def read(self) -> dict[str, str] | None:
        # An OS upgrade rewrites the file without a reboot: re-read it when its mtime changes.
        for candidate in CANDIDATES:
            path = os.path.join(self.paths.rootfs, candidate)
            try:
                mtime = os.stat(path).st_mtime
            except FileNotFoundError:
                continue
            if self._cached is None or self._cached[:2] != (path, mtime):
                self._cached = (path, mtime, os_release(read_text(path)))
            return self._cached[2]
        return None
