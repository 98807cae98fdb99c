"""node_uname_info: what uname(2) says (node_exporter's uname collector)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, gauge, read_text, register

LABELS = ("sysname", "release", "version", "machine", "nodename", "domainname")


@register
class UnameCollector(Collector[NoOptions]):
    name = "uname"
    description = "node_uname_info: kernel name, release and version, machine, host name, NIS domain name."
    node_collectors = ("uname",)

    def collect(self) -> Iterator[Metric]:
        # Read at every scrape, as node_exporter does: a renamed host shows at once.
        u = os.uname()
        try:
            # uname(2)'s domainname field, which os.uname() does not return; the same per UTS namespace.
            domainname = read_text(self.paths.proc("sys", "kernel", "domainname")).strip()
        except OSError:
            domainname = "(none)"
        family = gauge("uname_info", "Labeled system information as provided by the uname system call.",
                       labels=list(LABELS), namespace=NODE)
        family.add_metric([u.sysname, u.release, u.version, u.machine, u.nodename, domainname], 1.0)
        yield family
