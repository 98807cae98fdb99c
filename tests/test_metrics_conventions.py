"""What the exporter serves follows Prometheus' conventions and a real Prometheus can use it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.exposition import samples
from support.prometheus import Prometheus, promtool

if TYPE_CHECKING:
    from conftest import StartExporter


CAMEL_CASE = "metric names should be written in 'snake_case' not 'camelCase'"
# node_exporter's own names that promtool's lint refuses, kept because they are node_exporter's
# (its users' dashboards and alerts query exactly these): the entropy collector's pool sizes are
# in bits, which promtool would have in bytes.
NODE_EXPORTER_UNITS = {
    "node_entropy_available_bits": 'use base unit "bytes" instead of "bits"',
    "node_entropy_pool_size_bits": 'use base unit "bytes" instead of "bits"',
}


def kernel_field_names() -> set[str]:
    """The names node_exporter builds from the kernel's own CamelCase field names: every
    /proc/meminfo field (node_memory_MemAvailable_bytes, node_memory_Active_anon_bytes, ...)
    and every /proc/net/{snmp,netstat,snmp6} field (node_netstat_TcpExt_ListenOverflows, ...).
    promtool's lint calls them camelCase; exactly these, and no name of perfwatch's, are exempt."""
    out = set()
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        key = re.sub(r"\((.*)\)", r"_\1", key)
        out.add(f"node_memory_{key}_bytes" if len(rest.split()) == 2 else f"node_memory_{key}")
    for name in ("snmp", "netstat"):
        lines = Path("/proc/net", name).read_text().splitlines()
        for header in lines[::2]:  # "Tcp: RtoAlgorithm RtoMin ..." then a line of values
            protocol, _, fields = header.partition(":")
            out.update(f"node_netstat_{protocol}_{field}" for field in fields.split())
    snmp6 = Path("/proc/net/snmp6")
    if snmp6.exists():
        for line in snmp6.read_text().splitlines():
            match = re.match(r"(Ip6|Icmp6|UdpLite6|Udp6)(\w+)", line.split()[0]) if line.split() else None
            if match:
                out.add(f"node_netstat_{match[1]}_{match[2]}")
    return out


def test_promtool_check_metrics_is_clean(start_exporter: StartExporter) -> None:
    text = start_exporter().scrape()
    result = promtool("check", "metrics", stdin=text)
    exempt = kernel_field_names()
    problems = []
    for line in (result.stdout + result.stderr).splitlines():
        name, _, complaint = line.partition(" ")
        if (complaint == CAMEL_CASE and name in exempt) or NODE_EXPORTER_UNITS.get(name) == complaint:
            continue
        problems.append(line)
    assert not problems, "\n".join(problems)
    assert any(n.startswith("node_memory_") and n in exempt for n in (s.name for s in samples(text)))


def test_names_use_prefix_and_base_units(start_exporter: StartExporter) -> None:
    text = start_exporter().scrape()
    for sample in samples(text):
        if sample.name.startswith("process_"):  # prometheus_client's standard process metrics
            continue
        # node_exporter's name where it has the metric, perfwatch's own prefix where it has not.
        assert sample.name.startswith(("node_", "perfwatch_")), sample.name
        assert "percent" not in sample.name, sample.name
        assert not sample.name.endswith(("_kb", "_kilobytes", "_ms", "_milliseconds")), sample.name
        assert "pid" not in sample.labels, sample


@pytest.mark.slow
def test_real_prometheus_scrapes_and_rates(start_exporter: StartExporter, tmp_path: Path) -> None:
    exporter = start_exporter()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "perfwatch",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}],
    }
    with Prometheus(tmp_path, config) as prom:
        up = prom.wait_for('up{job="perfwatch"} == 1')
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{exporter.port}"
        # rate() under-reads a window that is not yet full of samples: wait until it is.
        prom.wait_for('count_over_time(node_cpu_seconds_total{cpu="0",mode="idle"}[5s]) >= 5')
        rates = prom.wait_for("sum by (cpu) (rate(node_cpu_seconds_total[5s]))")
        # Each CPU accounts for about one second of CPU time per second across its modes.
        for series in rates:
            assert 0.5 < float(series["value"][1]) < 1.5, series
        health = [t["health"] for t in prom.targets()]
        assert health == ["up"]
