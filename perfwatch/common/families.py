"""Metric families and their samples: the values collectors yield and renderers write.

The shapes of prometheus_client's (`Metric` with `name`, `documentation`, `type`, `unit` and
`samples`; `Sample` with client_python's fields; the `*MetricFamily` constructors and their
`add_metric`, arguments in the same order), so prometheus_client's registries and generate_latest
take these as they take their own (the archiver serves the HTTP server's families through its
registry). The exporter uses these instead, so that it never loads prometheus_client, whose
modules (http.server, wsgiref, urllib.request, inspect among them) would cost it some 4 MiB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

# OpenMetrics' family types, as prometheus_client names them.
TYPES = frozenset({"counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "info", "stateset"})


class Sample(NamedTuple):
    """One sample: client_python's fields, in its order."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None
    exemplar: Any = None
    native_histogram: Any = None


# Sample(...) runs NamedTuple's __new__, a Python function with defaults; tuple.__new__ builds the
# same tuple in C, in half the time. A scrape makes some 550 samples.
_new_sample = tuple.__new__


def _sample(name: str, labels: dict[str, str], value: float, timestamp: float | None) -> Sample:
    return _new_sample(Sample, (name, labels, value, timestamp, None, None))


class Metric:
    """A family: its name (without a counter's `_total` or an info's `_info`), help, type and
    unit, and its samples, each with its full name."""

    # A scrape makes some 280 families: slots make each smaller and quicker to fill.
    __slots__ = ("documentation", "name", "samples", "type", "unit")

    def __init__(self, name: str, documentation: str, typ: str, unit: str = "") -> None:
        if unit and not name.endswith("_" + unit):
            name += "_" + unit
        if not name:
            raise ValueError("metric name cannot be empty")
        if typ == "untyped":  # the text format's name for it
            typ = "unknown"
        if typ not in TYPES:
            raise ValueError(f"Invalid metric type: {typ}")
        self.name = name
        self.documentation = documentation
        self.unit = unit
        self.type = typ
        self.samples: list[Sample] = []

    def add_sample(self, name: str, labels: dict[str, str], value: float, timestamp: float | None = None,
                   exemplar: Any = None, native_histogram: Any = None) -> None:
        self.samples.append(Sample(name, labels, value, timestamp, exemplar, native_histogram))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Metric) and self.name == other.name and self.documentation == other.documentation
                and self.type == other.type and self.unit == other.unit and self.samples == other.samples)

    def __repr__(self) -> str:
        return f"Metric({self.name}, {self.documentation}, {self.type}, {self.unit}, {self.samples})"


def _label_names(value: object, labels: Sequence[str] | None) -> tuple[str, ...]:
    # A family is given either its one unlabelled value or the names of its labels, not both.
    if labels is not None and value is not None:
        raise ValueError("Can only specify at most one of value and labels.")
    return tuple(labels or ())


def _labelset(names: tuple[str, ...], values: Sequence[str]) -> dict[str, str]:
    # As prometheus_client: values beyond the names are dropped. zip's strict=False, though the
    # default, takes the keyword path and tripled the cost of an unlabelled sample's dict; one
    # label (device, cpu) is the common case, and a dict display costs a quarter of dict(zip()).
    if len(values) == 1 and names:
        return {names[0]: values[0]}
    return dict(zip(names, values)) if values else {}  # noqa: B905


class GaugeMetricFamily(Metric):
    __slots__ = ("_labelnames",)

    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None, unit: str = "") -> None:
        Metric.__init__(self, name, documentation, "gauge", unit)
        self._labelnames = _label_names(value, labels)
        if value is not None:
            self.samples.append(_sample(self.name, {}, value, None))

    def add_metric(self, labels: Sequence[str], value: float, timestamp: float | None = None) -> None:
        self.samples.append(_sample(self.name, _labelset(self._labelnames, labels), value, timestamp))


class UnknownMetricFamily(Metric):
    """A family without a type: written `# TYPE … untyped`."""

    __slots__ = ("_labelnames",)

    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None, unit: str = "") -> None:
        Metric.__init__(self, name, documentation, "unknown", unit)
        self._labelnames = _label_names(value, labels)
        if value is not None:
            self.samples.append(_sample(self.name, {}, value, None))

    def add_metric(self, labels: Sequence[str], value: float, timestamp: float | None = None) -> None:
        self.samples.append(_sample(self.name, _labelset(self._labelnames, labels), value, timestamp))


class CounterMetricFamily(Metric):
    """A counter: the family is named without `_total`, its samples with it."""

    __slots__ = ("_labelnames", "_total")

    def __init__(self, name: str, documentation: str, value: float | None = None,
                 labels: Sequence[str] | None = None, created: float | None = None, unit: str = "") -> None:
        Metric.__init__(self, name.removesuffix("_total"), documentation, "counter", unit)
        self._total = self.name + "_total"
        self._labelnames = _label_names(value, labels)
        if value is not None:
            self.samples.append(_sample(self._total, {}, value, None))
            if created is not None:
                self.samples.append(_sample(self.name + "_created", {}, created, None))

    def add_metric(self, labels: Sequence[str], value: float, created: float | None = None,
                   timestamp: float | None = None) -> None:
        labelset = _labelset(self._labelnames, labels)
        self.samples.append(_sample(self._total, labelset, value, timestamp))
        if created is not None:
            self.samples.append(_sample(self.name + "_created", dict(labelset), created, timestamp))


class InfoMetricFamily(Metric):
    """An info family: each sample is `<name>_info{labels and the value's labels} 1`."""

    __slots__ = ("_labelnames",)

    def __init__(self, name: str, documentation: str, value: dict[str, str] | None = None,
                 labels: Sequence[str] | None = None) -> None:
        Metric.__init__(self, name, documentation, "info")
        self._labelnames = _label_names(value, labels)
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, labels: Sequence[str], value: dict[str, str], timestamp: float | None = None) -> None:
        labelset = _labelset(self._labelnames, labels)
        self.samples.append(_sample(self.name + "_info", {**labelset, **value}, 1, timestamp))
