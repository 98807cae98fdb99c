"""exporter.exposition.render writes exactly what prometheus_client's generate_latest writes, of
perfwatch's families (common.families) and of prometheus_client's; perfwatch's families and process
metrics are what prometheus_client's would be."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import prometheus_client.core as prometheus_client_core
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

from perfwatch.common import families as ours
from perfwatch.exporter.collect import CollectorSet, Registry, build_registry
from perfwatch.exporter.collectors import REGISTRY
from perfwatch.exporter.exposition import Family, format_value, render, render_families
from perfwatch.exporter.process_metrics import ProcessMetrics
from perfwatch.exporter.settings import load_settings

F = TypeVar("F")


class Fixed(Generic[F]):
    """A collector of fixed families, perfwatch's or prometheus_client's."""

    def __init__(self, families: Sequence[F]) -> None:
        self.families = families

    def collect(self) -> Sequence[F]:
        return self.families


def reference(families: Sequence[Family]) -> bytes:
    """generate_latest's text of `families`, prometheus_client's or perfwatch's (duck typed: it reads
    only the attributes both have)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(families))  # type: ignore[arg-type]  # perfwatch's families too
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


def test_names_that_need_escaping_are_escaped_like_generate_latest() -> None:
    dotted = GaugeMetricFamily("perfwatch.dotted", "A UTF-8 metric name.", value=1)
    odd_label = GaugeMetricFamily("perfwatch_labels", "A UTF-8 label name.", labels=["ok", "not-ok", "a:b"])
    odd_label.add_metric(["1", "2", "3"], 3)
    colon_label = GaugeMetricFamily("perfwatch_colon", "A colon is fine in a metric name, not in a label name.",
                                    labels=["job:instance"])
    colon_label.add_metric(['x"y'], 4)
    digit = UnknownMetricFamily("1st_metric", "A leading digit.", value=5)
    counter = CounterMetricFamily("perfwatch_ünïcödé", "Créé.", labels=["ß"])
    counter.add_metric(["v"], 6, created=1700000000.5, timestamp=1700000001.25)
    info = InfoMetricFamily("perfwatch-host", "Host.", value={"host-name": "a"})
    # Fine samples first, then one whose label name needs escaping: what was written goes again, escaped.
    late = Metric("perfwatch_late", "The third sample's label needs escaping.", "gauge")
    for labels in ({"a": "1"}, {"a": "2"}, {"a-b": "3"}, {"a": "4"}):
        late.add_sample("perfwatch_late", labels, 1.0)
    families: list[Metric] = [dotted, odd_label, colon_label, late, digit, counter, info,
                              GaugeMetricFamily("perfwatch_fine", "Fine.", value=2)]
    assert render_families(families) == reference(families)


def test_perfwatch_families_are_prometheus_clients() -> None:
    """The same calls build the same families (name, help, type, unit, samples) in both modules."""

    def build(module: Any) -> list[Any]:
        gauge = module.GaugeMetricFamily("perfwatch_g", "G.", labels=["a", "b"], unit="bytes")
        gauge.add_metric(["1", "2"], 3.5)
        gauge.add_metric(["x"], 4, timestamp=17.5)  # fewer values than names: zip stops, as upstream
        one = module.GaugeMetricFamily("perfwatch_one", "One.", labels=["device"])
        one.add_metric(["eth0"], 1.0)
        one.add_metric(["eth1", "extra"], 2.0)  # more values than names: the extra one is dropped
        none = module.GaugeMetricFamily("perfwatch_none", "None.", labels=[])
        none.add_metric(["ignored"], 3.0)
        untyped_one = module.UnknownMetricFamily("perfwatch_uo", "UO.", labels=["cpu"])
        untyped_one.add_metric(["0"], 5.0)
        counter = module.CounterMetricFamily("perfwatch_c_total", "C.", labels=["k"])
        counter.add_metric(["v"], 7, 1700000000.0)  # created, positionally
        counter.add_metric(["w"], 8, None, 12.0)
        created = module.CounterMetricFamily("perfwatch_d", "D.", value=1, created=5.0)
        unknown = module.UnknownMetricFamily("perfwatch_u", "U.", value=2)
        info = module.InfoMetricFamily("perfwatch_i", "I.", labels=["x"])
        info.add_metric(["1"], {"version": "2"})
        raw = module.Metric("perfwatch_r", "R.", "untyped")
        raw.add_sample("perfwatch_r", {"l": "v"}, 9.0)
        histogram = module.Metric("perfwatch_h", "H.", "histogram")
        histogram.add_sample("perfwatch_h_bucket", {"le": "+Inf"}, 1)
        return [gauge, one, none, untyped_one, counter, created, unknown, info, raw, histogram]

    mine, theirs = build(ours), build(prometheus_client_core)

    def shape(family: Any) -> tuple[Any, ...]:
        return family.name, family.documentation, family.type, family.unit, [tuple(s) for s in family.samples]

    assert [shape(f) for f in mine] == [shape(f) for f in theirs]
    assert reference(mine) == reference(theirs) == render_families(mine)
    assert mine[0] == build(ours)[0] and mine[0] != mine[4]


@pytest.mark.parametrize("make", [
    lambda m: m.GaugeMetricFamily("perfwatch_x", "X.", value=1, labels=["a"]),
    lambda m: m.Metric("perfwatch_x", "X.", "timeseries"),
    lambda m: m.Metric("", "X.", "gauge"),
])
def test_perfwatch_families_refuse_what_prometheus_clients_refuse(make: Callable[[Any], object]) -> None:
    with pytest.raises(ValueError):
        make(prometheus_client_core)
    with pytest.raises(ValueError):
        make(ours)


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


def test_the_exporters_process_metrics_are_prometheus_clients() -> None:
    """Names, types, help texts and sample names of ProcessCollector's, in its order; values read
    from the same /proc/self at about the same moment."""
    theirs = list(ProcessCollector(registry=None).collect())
    mine = list(ProcessMetrics().collect())
    assert [(f.name, f.type, f.documentation, [s.name for s in f.samples]) for f in mine] == \
        [(f.name, f.type, f.documentation, [s.name for s in f.samples]) for f in theirs]
    got = {f.name: f.samples[0].value for f in mine}
    want = {f.name: f.samples[0].value for f in theirs}
    assert got["process_start_time_seconds"] == want["process_start_time_seconds"]
    assert got["process_max_fds"] == want["process_max_fds"]
    assert abs(got["process_open_fds"] - want["process_open_fds"]) <= 2  # listdir() holds one itself
    assert abs(got["process_resident_memory_bytes"] - want["process_resident_memory_bytes"]) < 4 << 20
    assert abs(got["process_virtual_memory_bytes"] - want["process_virtual_memory_bytes"]) < 16 << 20
    assert 0 <= got["process_cpu_seconds"] - want["process_cpu_seconds"] < 1  # read after theirs
    registry = Registry()
    registry.register(ProcessMetrics())
    assert render(registry) == reference(list(registry.collect()))


def test_process_metrics_without_proc_are_none() -> None:
    assert list(ProcessMetrics(proc="/nonexistent").collect()) == []
