"""What flows along the archiver's path: scrape → spool → store.

A `Batch` is everything one scrape of one target produced. It is the unit the spool persists
and the store writes, so it serialises to one line of JSON and back without loss (NaN and
±Inf included; label values of any unicode).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
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


# Not frozen: a frozen dataclass's __init__ costs 3.5 times as much (object.__setattr__ per field),
# a third of the parse. Hashed by value all the same; nothing changes a Sample once made.
@dataclasses.dataclass(slots=True, unsafe_hash=True)
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
        # A label set goes in full at its first sample only; a later sample with the same set names
        # it by number (the sets in order of first appearance). The samples of a scrape share a few
        # dozen sets (the parser hands out one tuple per set), so the line is half as long and
        # encodes and decodes 2-3 times as fast; a batch of distinct sets is as before, to the byte.
        numbers: dict[int, int] = {}  # id() of a label tuple → its number (the tuples live throughout)
        samples: list[tuple[str, tuple[tuple[str, str], ...] | int, float | str, int]] = []
        append = samples.append
        for s in self.samples:
            labels = s.labels
            number = numbers.get(id(labels))
            if number is None:
                numbers[id(labels)] = len(numbers)
            value = s.value
            # JSON has no NaN/Inf; they go as strings so the round trip is exact (inf - inf is NaN).
            append((s.name, labels if number is None else number, value if value - value == 0 else repr(value),
                    s.timestamp_ms))
        return json.dumps({
            "job": self.job,
            "instance": self.instance,
            "scraped_at_ms": self.scraped_at_ms,
            "metadata": [[m.name, m.kind, m.family_type, m.help, m.unit] for m in self.metadata.values()],
            "samples": samples,
        }, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Batch:
        data: dict[str, Any] = json.loads(line)
        metadata = {m[0]: MetricMeta(m[0], m[1], m[2], m[3], m[4]) for m in data["metadata"]}
        sets: list[tuple[tuple[str, str], ...]] = []  # in order of first appearance
        samples = []
        for name, labels, value, ts in data["samples"]:
            if type(labels) is int:
                labels = sets[labels]
            else:
                labels = tuple((k, v) for k, v in labels)
                sets.append(labels)
            samples.append(Sample(name, labels, _decode_float(value), ts))
        return cls(data["job"], data["instance"], data["scraped_at_ms"], samples, metadata)


def ms_to_datetime(ms: int) -> dt.datetime:
    """A sample's timestamp (ms since the epoch) as PostgreSQL's timestamptz comes and goes."""
    return EPOCH + dt.timedelta(milliseconds=ms)


def datetime_to_ms(value: dt.datetime) -> int:
    """The inverse of ms_to_datetime, exact (integer arithmetic, no float seconds)."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _decode_float(value: float | str) -> float:
    return float(value)
