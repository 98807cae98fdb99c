"""One scrape: run every enabled collector, time it, and never let one failure fail the rest.

Also the registry `/metrics` renders: the collectors, the process' own metrics and build info.
Rendering the registry as text is exposition.py's job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from perfwatch.exporter.collectors.base import Collector, metric_name

log = logging.getLogger(__name__)


class CollectorSet:
    """A prometheus_client collector that runs perfwatch's collectors at every scrape."""

    def __init__(self, collectors: Sequence[Collector[Any]]) -> None:
        self.collectors = list(collectors)
        # Collectors keep state between scrapes (perf deltas); one scrape at a time keeps it
        # consistent, and the GIL would serialise the work anyway.
        self._lock = threading.Lock()
        self._last_error: dict[str, str] = {}

    def collect(self) -> Iterator[Metric]:
        success = GaugeMetricFamily(
            metric_name("scrape_collector_success"),
            "1 if the collector succeeded in this scrape, 0 if it raised.",
            labels=["collector"],
        )
        duration = GaugeMetricFamily(
            metric_name("scrape_collector_duration_seconds"),
            "Time the collector took in this scrape.",
            labels=["collector"],
        )
        with self._lock:
            for collector in self.collectors:
                start = time.perf_counter()
                families = self._run(collector)
                duration.add_metric([collector.name], time.perf_counter() - start)
                success.add_metric([collector.name], 0.0 if families is None else 1.0)
                if families:
                    yield from families
        yield success
        yield duration

    def _run(self, collector: Collector[Any]) -> list[Metric] | None:
        try:
            families = list(collector.collect())
        except Exception as err:  # a collector must never fail the scrape
            message = f"{type(err).__name__}: {err}"
            # Log when a collector starts failing or fails differently, not at every scrape.
            if self._last_error.get(collector.name) != message:
                log.error("collector %s failed: %s", collector.name, message, exc_info=True)
                self._last_error[collector.name] = message
            return None
        if self._last_error.pop(collector.name, None) is not None:
            log.info("collector %s recovered", collector.name)
        return families

    def close(self) -> None:
        # Wait for a scrape in progress, and run no collector after this: a keep-alive connection
        # can still be served after the server stopped accepting, and a closed perf collector
        # would open its counters again.
        with self._lock:
            collectors, self.collectors = self.collectors, []
        for collector in collectors:
            try:
                collector.close()
            except Exception:
                log.exception("collector %s failed to close", collector.name)


class _Static:
    """A collector that serves families fixed at start (build info)."""

    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def build_registry(collector_set: CollectorSet, *, version: str) -> CollectorRegistry:
    """The registry `/metrics` renders: the collectors, the process' own metrics, build info."""
    import platform

    from prometheus_client import ProcessCollector
    from prometheus_client.core import InfoMetricFamily

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector_set)
    ProcessCollector(registry=registry)
    build_info = InfoMetricFamily(
        metric_name("exporter_build"),
        "perfwatch exporter version and the Python it runs on.",
        value={"version": version, "python_version": platform.python_version()},
    )
    registry.register(_Static(build_info))
    return registry
