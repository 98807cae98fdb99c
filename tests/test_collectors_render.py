"""exporter.exposition.render writes exactly what prometheus_client's generate_latest writes."""

from __future__ import annotations

import math

import pytest
from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from perfwatch.exporter.collect import CollectorSet, build_registry
from perfwatch.exporter.collectors import REGISTRY
from perfwatch.exporter.exposition import format_value, render, render_families
from perfwatch.exporter.settings import load_settings


class Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def reference(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(families))
    return generate_latest(registry)


def test_every_default_collector_renders_like_generate_latest() -> None:
    settings, collectors = load_settings(None)
    instances = [REGISTRY[name](entry.options, settings.paths) for name, entry in collectors.items() if entry.enabled]
    collector_set = CollectorSet(instances)
    try:
        families = list(build_registry(collector_set, version="1.2.3").collect())
    finally:
        collector_set.close()
    assert len(families) > 100
    assert render_families(families) == reference(families)


ODD_VALUES = ['plain', 'quote " inside', "back\\slash", "new\nline", "ünïcödé ✓", "'; DROP TABLE series; --",
              "\\n literally", ""]


def tricky_families() -> list[Metric]:
    gauge = GaugeMetricFamily("perfwatch_odd", 'Help with a back\\slash and a\nnewline and "quotes".',
                              labels=["zeta", "alpha"])
    for i, odd in enumerate(ODD_VALUES):
        gauge.add_metric([odd, str(i)], float(i))
    values = GaugeMetricFamily("perfwatch_values", "Every kind of float.", labels=["case"])
    for case, number in {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "zero": 0.0, "negzero": -0.0,
                         "big": 1e20, "eight_digits": 12345678.0, "seven_digits": 1234567.0, "tiny": 1.5e-7,
                         "negbig": -98765432.1, "int": 42, "huge_int": 2**63, "third": 1 / 3}.items():
        values.add_metric([case], number)
    counter = CounterMetricFamily("perfwatch_events", "Events.", labels=["kind"], created=1700000000.5)
    counter.add_metric(["a"], 3, created=1700000000.5, timestamp=1700000001.25)
    histogram = HistogramMetricFamily("perfwatch_latency_seconds", "Latency.", labels=["path"])
    histogram.add_metric(["/"], buckets=[("0.1", 1), ("1.0", 3), ("+Inf", 4)], sum_value=2.5)
    gauge_histogram = GaugeHistogramMetricFamily("perfwatch_queue", "Queue.", buckets=[("1.0", 2), ("+Inf", 5)],
                                                 gsum_value=7)
    summary = SummaryMetricFamily("perfwatch_size_bytes", "Sizes.", count_value=2, sum_value=10)
    return [
        gauge, values, counter, histogram, gauge_histogram, summary,
        InfoMetricFamily("perfwatch_host", "Host.", value={"hostname": 'a"b', "os": "debian"}),
        StateSetMetricFamily("perfwatch_mode", "Mode.", value={"on": True, "off": False}),
        UnknownMetricFamily("perfwatch_mystery", "Unknown.", value=1.0),
        GaugeMetricFamily("perfwatch_empty", "No samples at all."),
    ]


def test_tricky_families_render_like_generate_latest() -> None:
    families = tricky_families()
    assert render_families(families) == reference(families)


def test_names_that_need_escaping_fall_back_to_prometheus_client() -> None:
    dotted = GaugeMetricFamily("perfwatch.dotted", "A UTF-8 metric name.", value=1)
    odd_label = GaugeMetricFamily("perfwatch_labels", "A UTF-8 label name.", labels=["ok", "not-ok"])
    odd_label.add_metric(["1", "2"], 3)
    families: list[Metric] = [dotted, odd_label, GaugeMetricFamily("perfwatch_fine", "Fine.", value=2)]
    assert render_families(families) == reference(families)


@pytest.mark.parametrize("number", [0.1, 1e-300, 5e-324, 1.7976931348623157e308, 123456.5, 1234567.5, 99999999.0,
                                    -1e7, 1e16, 10**7, -(2**53)])
def test_format_value_matches_prometheus_client(number: float) -> None:
    from prometheus_client.utils import floatToGoString

    assert format_value(number) == floatToGoString(number)  # type: ignore[no-untyped-call]  # unannotated upstream


def test_render_of_a_registry_with_process_metrics() -> None:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    families = list(registry.collect())
    assert render_families(families) == reference(families)
    assert render(Fixed(families)) == reference(families)
