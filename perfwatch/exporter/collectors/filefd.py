"""Open file handles against the system limit, from /proc/sys/fs/file-nr."""

from __future__ import annotations

from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, parsing, read_text, register


@register
class FilefdCollector(Collector[NoOptions]):
    name = "filefd"
    description = "File handles allocated by the kernel and the system-wide maximum (fs.file-max)."
    node_collectors = ("filefd",)

    def collect(self) -> Iterator[Metric]:
        path = self.paths.proc("sys", "fs", "file-nr")
        with parsing(path):
            # "allocated  free-but-allocated (always 0 since 2.6)  maximum"
            allocated, _unused, maximum = (float(field) for field in read_text(path).split())
        yield gauge("filefd_allocated", "File descriptor statistics: allocated.", allocated, namespace=NODE)
        yield gauge("filefd_maximum", "File descriptor statistics: maximum.", maximum, namespace=NODE)
