"""What flows along the archiver's path: scrape → spool → store.

A `Batch` is everything one scrape of one target produced. It is the unit the spool persists
and the store writes, so it serialises to one line of JSON and back without loss (NaN and
±Inf included; label values of any unicode).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from typing import Any, Literal

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# How a sample is rolled up: counters (`_total`, and histogram/summary `_bucket`/`_sum`/`_count`)
# and untyped samples (no TYPE, as PromQL's rate() treats them) get reset-corrected increases;
# gauges (and info, stateset) do not.
SampleKind = Literal["counter", "gauge", "untyped"]


@dataclasses.dataclass(frozen=True, slots=True)
class MetricMeta:
    """Catalog facts about one sample name (`foo_total`, `foo_bucket`, `bar`)."""

    name: str
    kind: SampleKind
    family_type: str  # as exposed: counter, gauge, histogram, summary, info, stateset, unknown
    help: str = ""
    unit: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    name: str  # the sample name as exposed, e.g. node_cpu_seconds_total
    labels: tuple[tuple[str, str], ...]  # sorted by label name; includes job and instance
    value: float
    timestamp_ms: int  # milliseconds since the epoch (UTC)


@dataclasses.dataclass(slots=True)
class Batch:
    job: str
    instance: str
    scraped_at_ms: int
    samples: list[Sample]
    metadata: dict[str, MetricMeta]  # sample name → catalog facts, one per name in `samples`

    def to_json(self) -> str:
        return json.dumps({
            "job": self.job,
            "instance": self.instance,
            "scraped_at_ms": self.scraped_at_ms,
            "metadata": [[m.name, m.kind, m.family_type, m.help, m.unit] for m in self.metadata.values()],
            "samples": [[s.name, s.labels, _encode_float(s.value), s.timestamp_ms] for s in self.samples],
        }, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Batch:
        data: dict[str, Any] = json.loads(line)
        metadata = {m[0]: MetricMeta(m[0], m[1], m[2], m[3], m[4]) for m in data["metadata"]}
        samples = [Sample(name, tuple((k, v) for k, v in labels), _decode_float(value), ts)
                   for name, labels, value, ts in data["samples"]]
        return cls(data["job"], data["instance"], data["scraped_at_ms"], samples, metadata)


def ms_to_datetime(ms: int) -> dt.datetime:
    """A sample's timestamp (ms since the epoch) as PostgreSQL's timestamptz comes and goes."""
    return EPOCH + dt.timedelta(milliseconds=ms)


def datetime_to_ms(value: dt.datetime) -> int:
    """The inverse of ms_to_datetime, exact (integer arithmetic, no float seconds)."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _encode_float(value: float) -> float | str:
    # JSON has no NaN/Inf; write them as strings so the round trip is exact.
    return value if math.isfinite(value) else repr(value)


def _decode_float(value: float | str) -> float:
    return float(value)
