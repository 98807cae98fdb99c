"""The reference the fast parser (perfwatch.archiver.parse) is tested against: prometheus_client's
parsers, with the archiver's rules on top — the implementation scrape.parse_lines had before the
fast one, moved here unchanged, plus OpenMetrics (prometheus_client.openmetrics.parser, where a
counter's samples keep their `_total` as they are exposed).

And the bodies to compare them on that need a process or a binary: the perfwatch exporter's own
output, rendered in-process, and node_exporter's, where Debian's prometheus-node-exporter is installed.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator

from prometheus_client.openmetrics.parser import text_fd_to_metric_families as openmetrics_fd_to_metric_families
from prometheus_client.parser import text_fd_to_metric_families

from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.parse import (
    LABEL_NAME_RE,
    MALFORMED,
    METRIC_NAME_RE,
    SAMPLE_LIMIT,
    ScrapeError,
    ScrapeLimits,
    _check_label_limits,
    relabel,
    sample_kind,
)

log = logging.getLogger(__name__)
_COUNTER_TYPE_RE = re.compile(r"^\s*#\s*TYPE\s+(\S+)\s+counter\s*$")
NO_LIMITS = ScrapeLimits()


def reference_parse_lines(lines: Iterable[str], target_labels: dict[str, str], scraped_at_ms: int,
                          limits: ScrapeLimits = NO_LIMITS, *, openmetrics: bool = False) -> Batch:
    """The exposition's lines (as they arrive) → Batch, with prometheus_client's parser."""
    # prometheus_client's parser renames the samples of a counter declared without `_total`
    # (`# TYPE foo counter` / `foo 1`) to `foo_total`; Prometheus stores `foo`, and so do we. The
    # parser reads a family's TYPE line before it yields the family, so the names are known in time.
    untotalled: set[str] = set()

    def watch(source: Iterable[str]) -> Iterator[str]:
        # sample_limit is counted here, on the lines: the parser yields a family only once it has
        # read all of it, and a body of one family with a million samples would be held whole first.
        sample_lines = 0
        for line in source:
            if line.startswith("#"):
                if (match := _COUNTER_TYPE_RE.match(line)) and not match[1].endswith("_total"):
                    untotalled.add(match[1])
            elif line.strip():
                sample_lines += 1
                if limits.sample_limit and sample_lines > limits.sample_limit:
                    raise ScrapeError(SAMPLE_LIMIT, f"more than sample_limit ({limits.sample_limit}) samples")
            yield line

    samples: list[Sample] = []
    metadata: dict[str, MetricMeta] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    duplicates = 0
    parse = openmetrics_fd_to_metric_families if openmetrics else text_fd_to_metric_families
    try:
        # typed as TextIO, but it only iterates over the lines
        for family in parse(watch(lines)):  # type: ignore[arg-type]
            for s in family.samples:
                name = s.name
                if (not openmetrics and family.type == "counter" and family.name in untotalled
                        and name == family.name + "_total"):
                    name = family.name
                if not METRIC_NAME_RE.match(name):
                    raise ValueError(f"invalid metric name {name!r}")
                for label in s.labels:
                    if not LABEL_NAME_RE.match(label) or label.startswith("__"):
                        raise ValueError(f"invalid label name {label!r} on {name}")
                if isinstance(s.value, float) and math.isnan(s.value):
                    continue  # Prometheus' stale marker (or a plain NaN): never archived
                labels = relabel(s.labels, target_labels)
                _check_label_limits(name, labels, limits)
                if (name, labels) in seen:
                    duplicates += 1  # Prometheus keeps the first and rejects the rest
                    continue
                seen.add((name, labels))
                ts = scraped_at_ms if s.timestamp is None else round(float(s.timestamp) * 1000)
                samples.append(Sample(name, labels, float(s.value), ts))
                if name not in metadata:
                    metadata[name] = MetricMeta(name, sample_kind(family.type, family.name, name), family.type,
                                                family.documentation or "", family.unit or "")
    except ScrapeError:
        raise
    except Exception as err:  # the parser raises ValueError, IndexError, … on bad input
        raise ScrapeError(MALFORMED, f"cannot parse exposition: {type(err).__name__}: {err}"[:300]) from None
    if duplicates:
        log.warning("target %s/%s exposed %d duplicate samples; kept the first of each",
                    target_labels.get("job"), target_labels.get("instance"), duplicates)
    return Batch(target_labels.get("job", ""), target_labels.get("instance", ""), scraped_at_ms, samples, metadata)


def perfwatch_exposition() -> str:
    """What the perfwatch exporter serves with its default collectors, rendered in-process (a
    second collection, so that the collectors with deltas have values)."""
    from perfwatch.exporter.collect import CollectorSet, build_registry
    from perfwatch.exporter.collectors import REGISTRY
    from perfwatch.exporter.exposition import render_families
    from perfwatch.exporter.settings import load_settings

    settings, collectors = load_settings(None)
    instances = [REGISTRY[name](entry.options, settings.paths) for name, entry in collectors.items() if entry.enabled]
    collector_set = CollectorSet(instances)
    try:
        registry = build_registry(collector_set, version="1.2.3")
        list(registry.collect())
        return render_families(list(registry.collect())).decode()
    finally:
        collector_set.close()


def node_exporter_exposition() -> str | None:
    """node_exporter's real /metrics on this machine, or None where it is not installed."""
    from support import node_exporter

    return node_exporter.scrape_once() if node_exporter.NODE_EXPORTER else None
