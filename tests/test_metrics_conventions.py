"""What the exporter serves follows Prometheus' conventions and a real Prometheus can use it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.exposition import samples
from support.prometheus import Prometheus, promtool

if TYPE_CHECKING:
    from conftest import StartExporter


def test_promtool_check_metrics_is_clean(start_exporter: StartExporter) -> None:
    text = start_exporter().scrape()
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_names_use_prefix_and_base_units(start_exporter: StartExporter) -> None:
    text = start_exporter().scrape()
    for sample in samples(text):
        if sample.name.startswith("process_"):  # prometheus_client's standard process metrics
            continue
        assert sample.name.startswith("perfwatch_"), sample.name
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
        prom.wait_for('count_over_time(perfwatch_cpu_seconds_total{cpu="0",mode="idle"}[5s]) >= 5')
        rates = prom.wait_for("sum by (cpu) (rate(perfwatch_cpu_seconds_total[5s]))")
        # Each CPU accounts for about one second of CPU time per second across its modes.
        for series in rates:
            assert 0.5 < float(series["value"][1]) < 1.5, series
        health = [t["health"] for t in prom.targets()]
        assert health == ["up"]
