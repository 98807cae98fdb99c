"""Parse Prometheus text exposition into something tests can index."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str) -> Iterator[Sample]:
    for family in text_string_to_metric_families(text):
        yield from family.samples


def values(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample named `name`: its label set → value."""
    return {frozenset(s.labels.items()): s.value for s in samples(text) if s.name == name}


def value(text: str, name: str, **labels: str) -> float:
    """The one sample of `name` carrying `labels` (other labels may exist only if unambiguous)."""
    found = [s.value for s in samples(text)
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    if len(found) != 1:
        raise KeyError(f"{name}{labels}: {len(found)} samples")
    return found[0]


def names(text: str) -> set[str]:
    return {s.name for s in samples(text)}


# Bodies every text-format parser must refuse as malformed (an unterminated label value, a
# fourth field, a value that is no number, an invalid metric or label name, a TYPE without type).
MALFORMED_BODIES = [
    "m{a=\"unterminated} 1\n",
    "m 1 2 3 x\n",
    "m notanumber\n",
    "bad-name 1\n",
    "m{__reserved=\"x\"} 1\n",
    "# TYPE m\n",
]
